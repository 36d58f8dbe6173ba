"""``calibtune cache``: show and clean the artifact store (cached answers, features and cells)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from calibtune.errors import friendly as _friendly

cache_app = typer.Typer(help="Show and clean the artifact store (cached answers, features and cells).",
                        no_args_is_help=True)


def _human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _store():
    from calibtune.bundled import cache_dir
    from calibtune.store import ArtifactStore

    return ArtifactStore(cache_dir() / "store")


@cache_app.command("ls")
@_friendly
def cache_ls(stage: Annotated[Optional[str], typer.Option("--stage", help="Only this stage (answers, features, option_features, cell).")] = None) -> None:
    """List the stored artifacts: stage, key, size, age and what they belong to."""
    import time

    from calibtune.store import list_artifacts

    store = _store()
    rows = [a for a in list_artifacts(store) if stage in (None, a.stage)]
    typer.echo(f"store: {store.root}  ({len(rows)} artifacts)")
    now = time.time()
    for a in rows:
        age = (now - a.modified) / 3600
        typer.echo(f"{a.stage:9} {a.key[:12]:12} {_human(a.size):>10} {age:7.1f} h  {a.summary}")


@cache_app.command("du")
@_friendly
def cache_du() -> None:
    """Disk use of the store, per stage, and of the converted models."""
    from calibtune.bundled import cache_dir
    from calibtune.store import folder_size, list_artifacts

    totals: dict[str, list[int]] = {}
    for a in list_artifacts(_store()):
        entry = totals.setdefault(a.stage, [0, 0])
        entry[0] += 1
        entry[1] += a.size
    for stage, (count, size) in sorted(totals.items()):
        typer.echo(f"{stage:9} {count:5} artifacts {_human(size):>10}")
    models = cache_dir() / "models"
    if models.is_dir():
        typer.echo(f"{'models':9} {len(list(models.iterdir())):5} folders   {_human(folder_size(models)):>10}")
    typer.echo(f"total {_human(folder_size(cache_dir())) if cache_dir().is_dir() else '0 B'} in {cache_dir()}")


@cache_app.command("prune")
@_friendly
def cache_prune(
    stage: Annotated[Optional[str], typer.Option("--stage", help="Only this stage.")] = None,
    older_than: Annotated[Optional[float], typer.Option("--older-than", help="Only artifacts older than this many days.")] = None,
    incomplete: Annotated[bool, typer.Option("--incomplete", help="Only leftovers of interrupted writes.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would go, remove nothing.")] = False,
) -> None:
    """Remove stored artifacts (all of them unless filtered); a rerun recomputes what it needs."""
    import time

    from calibtune.store import list_artifacts, remove_artifact

    now = time.time()
    store = _store()
    chosen = [a for a in list_artifacts(store) if stage in (None, a.stage)
              and (older_than is None or now - a.modified > older_than * 86400)
              and (not incomplete or not a.complete)]
    freed = sum(a.size for a in chosen)
    if not dry_run:
        with store.exclusive("prune the store"):  # a running study may be reading or training from it
            for a in chosen:
                remove_artifact(a)
    verb = "would remove" if dry_run else "removed"
    typer.echo(f"{verb} {len(chosen)} artifacts, {_human(freed)}")
