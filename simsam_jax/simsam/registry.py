"""A tiny name -> function registry for pluggable SimSAM strategies."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

F = TypeVar("F", bound=Callable)


class Registry(Generic[F]):
  """Maps strategy names to functions; `register` is a decorator.

  >>> CLICKS = Registry("click strategy")
  >>> @CLICKS.register("my_clicks")
  ... def my_clicks(...): ...
  """

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: dict[str, F] = {}

  def register(self, name: str) -> Callable[[F], F]:
    def decorator(fn: F) -> F:
      if name in self._entries:
        raise ValueError(f"{self.kind} {name!r} is already registered")
      self._entries[name] = fn
      return fn
    return decorator

  def get(self, name: str) -> F:
    if name not in self._entries:
      raise ValueError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
    return self._entries[name]

  def names(self) -> list[str]:
    return sorted(self._entries)

  def __contains__(self, name: str) -> bool:
    return name in self._entries
