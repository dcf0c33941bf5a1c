"""Which wheels a wheelhouse holds (launch/wheelhouse.sh): pip resolves what installing
`posescale[EXTRAS]` on the node needs (`pip install --dry-run --report`, for the node's Python and
platform), and this keeps what is needed without the node's own torch: everything reachable from
posescale's requirements without passing through torch, torchvision or triton. What only those
bring (torch's CUDA libraries, triton, sympy's and setuptools' way in through torch) is left out,
whatever requirement asked for torch (timm does, besides posescale).

    python launch/wheelhouse_plan.py REPORT.json --python 3.12 --keep KEEP.txt
    # KEEP.txt: one `name==version` a line; the left-out packages are printed, one a line
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import deque
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# The packages the node brings with its torch: never carried, nor what only they require
NODE_PROVIDES = ("torch", "torchvision", "triton")


def target_environment(python: str) -> dict[str, str]:
    """Marker values of the node's interpreter: this one's, with the target Python version."""
    env = default_environment()
    env.update(python_version=python, python_full_version=f"{python}.0")
    env.update(implementation_name="cpython", platform_python_implementation="CPython")
    env.update(sys_platform="linux", platform_system="Linux", platform_machine="x86_64")
    return env


def requirements_of(metadata: dict, extras: set[str], env: dict[str, str]) -> list[Requirement]:
    """The requirements of one resolved package that apply on the node with `extras`."""
    applying = []
    for text in metadata.get("requires_dist") or []:
        req = Requirement(text)
        if req.marker is None or any(
            req.marker.evaluate({**env, "extra": extra}) for extra in extras | {""}
        ):
            applying.append(req)
    return applying


def plan(report: dict, python: str) -> tuple[list[dict], list[tuple[dict, list[str]]]]:
    """(kept, left_out): the resolved packages to carry, and those left out, each with the
    kept packages that asked for it."""
    env = target_environment(python)
    resolved = {canonicalize_name(p["metadata"]["name"]): p for p in report["install"]}
    roots = [name for name, p in resolved.items() if p.get("requested")]
    extras = {name: set(resolved[name].get("requested_extras") or []) for name in roots}
    kept, queue = set(), deque(roots)
    asked_by: dict[str, set[str]] = {}
    while queue:
        name = queue.popleft()
        if name in kept:
            continue
        kept.add(name)
        for req in requirements_of(resolved[name]["metadata"], extras.get(name, set()), env):
            wanted = canonicalize_name(req.name)
            if wanted not in resolved:
                continue  # not in the resolution (none is, with --ignore-installed)
            extras.setdefault(wanted, set()).update(req.extras)
            if wanted in NODE_PROVIDES:
                asked_by.setdefault(wanted, set()).add(resolved[name]["metadata"]["name"])
            else:
                queue.append(wanted)
    left = [(p, sorted(asked_by.get(n, ()))) for n, p in resolved.items() if n not in kept]
    return [resolved[n] for n in resolved if n in kept], left


def pin(package: dict) -> str:
    return f"{package['metadata']['name']}=={package['metadata']['version']}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="pip's --report of the node's install")
    parser.add_argument("--python", required=True, help="the node's Python, e.g. 3.12")
    parser.add_argument("--keep", type=Path, required=True, help="write the kept pins here")
    args = parser.parse_args(argv)
    kept, left = plan(json.loads(args.report.read_text()), args.python)
    args.keep.write_text("".join(pin(p) + "\n" for p in kept))
    for package, asked in sorted(left, key=lambda item: item[0]["metadata"]["name"].lower()):
        why = f"required by {', '.join(asked)}" if asked else "needed only through torch"
        print(f"{pin(package)} ({why})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
