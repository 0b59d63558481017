"""Write a scenario back as TOML (the standard library reads TOML but does not write it).

Only what scenarios hold: strings, integers, floats, booleans, lists of those, tables, and arrays of tables whose
sub-tables (`[task.weights]`) follow their entry's own keys.
"""

from __future__ import annotations

import json
import math
from typing import Any


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isinf(v) or math.isnan(v):
            raise ValueError(f"no TOML form for {v!r} in a scenario")
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a TOML basic string (same escapes)
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} as a TOML value")


def _is_table_array(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def _body(d: dict[str, Any], prefix: str, out: list[str]) -> None:
    for k, v in d.items():
        if not isinstance(v, dict) and not _is_table_array(v):
            out.append(f"{k} = {_value(v)}")
    for k, v in d.items():
        name = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out += ["", f"[{name}]"]
            _body(v, name, out)
        elif _is_table_array(v):
            for entry in v:
                out += ["", f"[[{name}]]"]
                _body(entry, name, out)


def dumps(d: dict[str, Any]) -> str:
    out: list[str] = []
    _body(d, "", out)
    return "\n".join(out).lstrip("\n") + "\n"
