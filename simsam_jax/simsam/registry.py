"""A tiny name -> function registry for pluggable strategies and plug-ins.

Every entry may carry declarations made at registration (keyword arguments
of `register`), read back with `declared(name, field)`. SimSAM's strategy
registries use one: `needs_ground_truth` (default False), which tells the
engine, `segment` and the evaluation that the strategy reads the
ground-truth mask, so none of them tests for a strategy by name.
"""

from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar

F = TypeVar("F", bound=Callable)


class Registry(Generic[F]):
  """Maps names to functions (or objects); `register` is a decorator.

  >>> CLICKS = Registry("click strategy", needs_ground_truth=False)
  >>> @CLICKS.register("my_clicks", needs_ground_truth=True)
  ... def my_clicks(...): ...
  >>> CLICKS.declared("my_clicks", "needs_ground_truth")
  True

  Args:
    kind: what an entry is, for error messages ("click strategy").
    **defaults: the declarations an entry may make at registration, with
      their default values; `register` refuses any other keyword.
  """

  def __init__(self, kind: str, **defaults: Any):
    self.kind = kind
    self.defaults = dict(defaults)
    self._entries: dict[str, F] = {}
    self._declarations: dict[str, dict[str, Any]] = {}

  def register(self, name: str, **declarations: Any) -> Callable[[F], F]:
    unknown = set(declarations) - set(self.defaults)
    if unknown:
      raise TypeError(f"{self.kind} {name!r}: unknown declarations {sorted(unknown)}; "
                      f"a {self.kind} declares {sorted(self.defaults) or 'nothing'}")

    def decorator(fn: F) -> F:
      if name in self._entries:
        raise ValueError(f"{self.kind} {name!r} is already registered")
      self._entries[name] = fn
      self._declarations[name] = {**self.defaults, **declarations}
      return fn
    return decorator

  def get(self, name: str) -> F:
    if name not in self._entries:
      raise ValueError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
    return self._entries[name]

  def declared(self, name: str, field: str) -> Any:
    """What entry `name` declared for `field` at registration (or the default)."""
    self.get(name)
    return self._declarations[name][field]

  def unregister(self, name: str) -> None:
    """Removes an entry (tests that register a temporary one)."""
    self.get(name)
    del self._entries[name], self._declarations[name]

  def names(self) -> list[str]:
    return sorted(self._entries)

  def __contains__(self, name: str) -> bool:
    return name in self._entries
