"""The folders a review app may touch, fixed at launch (no streamlit here).

Read: the run folder, the results file's folder and each ``--data-root`` (where the inspected images or the
studies live when that is elsewhere, e.g. the line's hot folder). Write: only under the export root
(``--export-root``, default the results file's folder). Every path is resolved, symlinks included, before the
check, so neither ``..`` nor a link leads out; nothing typed in the page can widen them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.errors import InputError


def _resolved(p: Path | str) -> Path:
    return Path(p).expanduser().resolve()


@dataclass(frozen=True)
class Roots:
    read: tuple[Path, ...]  # resolved
    export: Path | None  # resolved; None: no export possible (no results file given)

    @classmethod
    def from_launch(cls, run: Path | None, results: Path | None, export_root: Path | None = None,
                    data_roots: tuple[Path, ...] | list[Path] = ()) -> Roots:
        read = [_resolved(p) for p in (run, _resolved(results).parent if results is not None else None, *data_roots)
                if p is not None]
        export = _resolved(export_root) if export_root is not None else (
            _resolved(results).parent if results is not None else None)
        return cls(tuple(dict.fromkeys(read)), export)

    def readable(self, path: Path | str) -> Path:
        """``path`` resolved, when it lies under a read root; InputError naming the roots otherwise."""
        p = _resolved(path)
        if any(p.is_relative_to(r) for r in self.read):
            return p
        allowed = ", ".join(str(r) for r in self.read) or "none"
        raise InputError(f"{path}: outside the folders this app may read ({allowed}); to show it, start the app "
                         f"with --data-root {p.parent}")

    def export_target(self, name: str, *, suffix: str | None = None) -> Path:
        """Where an export named ``name`` in the page goes: ``name`` relative to the export root (an absolute
        path must lie under it), resolved; never the root itself, never a hidden name (``.x``: the suite's own
        markers and temporary files). InputError says why a name is refused."""
        if self.export is None:
            raise InputError("no export root (start the app with --results FILE or --export-root DIR)")
        text = (name or "").strip()
        if not text or "\x00" in text:
            raise InputError("give a name for the export")
        raw = Path(text)  # no ~ expansion: page input names a place under the root, nothing else
        target = (raw if raw.is_absolute() else self.export / raw).resolve()
        if not target.is_relative_to(self.export) or target == self.export:
            raise InputError(f"{text}: outside the export root {self.export}; give a name inside it")
        if target.name.startswith("."):
            raise InputError(f"{text}: hidden names are reserved for the suite's own files; choose another name")
        if suffix is not None and target.suffix.lower() != suffix:
            raise InputError(f"{text}: the file name must end in {suffix}")
        return target
