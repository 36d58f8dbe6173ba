"""Short names of models that stay distinct: for run-folder names, and for labels in figures."""

from __future__ import annotations

import re


def distinct_short_names(names: list[str], sep: str = "/") -> dict[str, str]:
    """Each name's last path component, with as many parent components (joined by ``sep``) as it
    takes to tell two names apart: ``org-a/Llama-3-8B`` and ``org-b/Llama-3-8B`` stay apart."""
    parts = {n: [p for p in re.split(r"[\\/]", str(n).strip()) if p] or [str(n)] for n in names}
    depth = {n: 1 for n in names}

    def short(n: str) -> str:
        return sep.join(parts[n][-depth[n]:])

    while True:
        groups: dict[str, list[str]] = {}
        for n in names:
            groups.setdefault(short(n), []).append(n)
        clashes = [g for g in groups.values() if len(g) > 1]
        grew = False
        for group in clashes:
            for n in group:
                if depth[n] < len(parts[n]):
                    depth[n] += 1
                    grew = True
        if not grew:  # distinct, or names that only differ in ways a path does not show
            return {n: short(n) for n in names}
