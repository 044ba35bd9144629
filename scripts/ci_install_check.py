"""Install check (scripts/ci_smoke.sh): read `pip install --dry-run --report` plans and fail if a plan
replaces an installed package.

    python ci_install_check.py FREEZE CORE_REPORT [GPU_REPORT]

FREEZE: `pip freeze --all` of the venv (the user's stack). CORE_REPORT: the plan of the wheel (core +
[assets]): it may add packages, but none that is installed (no upgrade, downgrade or reinstall) and never
torch. GPU_REPORT: the plan of the wheel's [gpu] extra beside the stack's CUDA torch: no torch, triton or
nvidia-* package (they are the user's torch's business); other replacements the extra's own dependencies
need (onnx on an old numpy: numpy 2) are printed as notes.
"""

from __future__ import annotations

import json
import re
import sys


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed(freeze: str) -> dict[str, str]:
    out = {}
    for line in open(freeze):
        line = line.strip()
        if "==" in line:
            name, version = line.split("==", 1)
            out[_norm(name)] = version
        elif " @ " in line:
            out[_norm(line.split(" @ ", 1)[0])] = "@"
    return out


def plan(report: str) -> list[tuple[str, str]]:
    data = json.load(open(report))
    return [(_norm(i["metadata"]["name"]), i["metadata"]["version"]) for i in data.get("install", [])]


def check(
    what: str, items: list[tuple[str, str]], have: dict[str, str], forbid: tuple[str, ...], strict: bool
) -> list[str]:
    errors = []
    for name, version in items:
        if name == "xite-fast":
            continue
        if name.startswith(forbid):
            errors.append(f"{what}: plans {name}=={version}")
        elif name in have:
            msg = f"{what}: would replace installed {name}=={have[name]} by {version}"
            if strict:
                errors.append(msg)
            else:
                print(f"note: {msg} (the extra's own dependencies need it)")
    added = ", ".join(f"{n}=={v}" for n, v in items) or "nothing"
    print(f"install check {what}: torch {have.get('torch', '?')}; the plan adds {added}")
    return errors


def main() -> int:
    have = installed(sys.argv[1])
    errors = check("core", plan(sys.argv[2]), have, ("torch",), strict=True)
    if len(sys.argv) > 3:
        errors += check(
            "[gpu]", plan(sys.argv[3]), have, ("torch", "triton", "nvidia-", "pytorch-triton"), strict=False
        )
    for e in errors:
        print(e, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
