"""Where the configs live, how experiments/ and sweeps/ become Hydra groups, and building
components from config nodes with clear errors."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from clozelab.core.errors import BuildError, ClozelabError

OVERLAY_GROUPS = {"experiment": "experiments", "sweep": "sweeps"}


def resource_dir(name: str) -> Path:
    """``conf``, ``experiments`` or ``sweeps``: inside the installed package (a wheel carries them
    there) or at the top of the source tree (editable install, checkout)."""
    here = Path(__file__).resolve().parents[1]  # the clozelab package
    for candidate in (here / name, here.parents[1] / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"clozelab's {name}/ directory is missing from {here}")


def conf_dir() -> Path:
    return resource_dir("conf")


@cache
def register_overlays() -> None:
    """Store every experiments/*.yaml and sweeps/*.yaml in Hydra's ConfigStore as the groups
    ``experiment`` and ``sweep`` (package ``_global_``): ``experiment=bert``, ``sweep=seeds``."""
    store = ConfigStore.instance()
    for group, folder in OVERLAY_GROUPS.items():
        for path in sorted(resource_dir(folder).glob("*.yaml")):
            node = OmegaConf.load(path)
            if OmegaConf.select(node, "clozelab_overlay", default=True) is False:
                continue  # e.g. a W&B sweep file, which is not a Hydra overlay
            store.store(group=group, name=path.stem, node=node, package="_global_")


def overlay_names(group: str) -> list[str]:
    return sorted(p.stem for p in resource_dir(OVERLAY_GROUPS[group]).glob("*.yaml"))


def target_class(node: DictConfig, key: str):
    """The class a ``_target_`` node names, without building it."""
    target = node.get("_target_") if node is not None else None
    if not target:
        raise ClozelabError(f"{key}: no _target_ given. Fix: select a preset of the {key} group.")
    try:
        return get_class(target)
    except Exception as exc:
        raise ClozelabError(
            f"{key}._target_={target!r}: cannot be imported ({exc}). Fix: name an existing class."
        ) from exc


def component_class(node: DictConfig, key: str, base: type) -> type:
    """The class ``node._target_`` names, checked to subclass the extension point ``base``
    (``Corruption``, ``Objective``, ``Task`` ...): a user's class must declare the hooks clozelab
    asks it about, so it subclasses the base that declares them."""
    cls = target_class(node, key)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ClozelabError(
            f"{key}._target_={node.get('_target_')!r} is not a {base.__name__}. Fix: subclass "
            f"{base.__module__}.{base.__name__} (its hooks say what the component needs and "
            "produces), or name one of clozelab's classes."
        )
    return cls


def _raised_inside(exc: BaseException | None) -> bool:
    """Whether ``exc`` was raised in the code of the component hydra called (its innermost frame
    is not hydra's: a keyword the constructor does not take fails at hydra's call)."""
    tb = exc.__traceback__ if exc is not None else None
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return not tb.tb_frame.f_globals.get("__name__", "").startswith("hydra.")


def build(node: DictConfig, key: str, **runtime):
    """``hydra.utils.instantiate`` with user-facing errors: a ClozelabError raised by the component
    comes out as it is, a wrong keyword names the config key and the accepted parameters."""
    try:
        return instantiate(node, **runtime)
    except InstantiationException as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, ClozelabError):
            raise cause from None
        raise BuildError(
            f"{key}: could not build {node.get('_target_')} ({cause or exc}). Fix: check the keys "
            f"under {key} against the parameters of that class.",
            inside=_raised_inside(cause),
        ) from exc
    except ClozelabError:
        raise
    except TypeError as exc:
        raise ClozelabError(f"{key}: could not build {node.get('_target_')} ({exc}).") from exc
