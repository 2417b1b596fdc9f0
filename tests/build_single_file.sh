#!/usr/bin/env bash
# Build the single-file executable of ingress-box from this checkout: dist/ingress-box.pyz, a shiv
# zipapp that runs on a system CPython 3.11, 3.12 or 3.13 (Linux, glibc >= 2.28, this machine's
# architecture) with no virtualenv and no network. See README, "Single-file executable".
#
#   tests/build_single_file.sh [--out DIR] [--constraint FILE] [--pyinstaller]
#
#   --out DIR          where to write (default: dist/)
#   --constraint FILE  pin the dependencies, e.g. the .lock file of an earlier build, to rebuild
#                      it byte for byte
#   --pyinstaller      also build DIR/ingress-box, a PyInstaller one-file binary (the road not
#                      taken; kept to re-measure it)
#
# Writes DIR/ingress-box.pyz, DIR/ingress-box.pyz.sha256 and DIR/ingress-box.pyz.lock (the
# resolved name==version of every bundled distribution). Everything comes from PyPI; the build
# tools are pinned below and live in a throw-away venv. Reproducible: the same checkout, the
# same .lock and the same build Python minor version give the same bytes (timestamps come from
# SOURCE_DATE_EPOCH, default the last commit's time; bytecode is compiled with PYTHONHASHSEED=0
# and hash-based invalidation).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$ROOT/dist
CONSTRAINT=
PYINSTALLER=0
while [ $# -gt 0 ]; do
    case $1 in
        --out) OUT=$(mkdir -p "$2" && cd "$2" && pwd); shift 2 ;;
        --constraint) CONSTRAINT=$(cd "$(dirname "$2")" && pwd)/$(basename "$2"); shift 2 ;;
        --pyinstaller) PYINSTALLER=1; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

PYTHON=${PYTHON:-python3}
SHIV_VERSION=1.0.8
PYINSTALLER_VERSION=6.22.3
# Interpreters the zipapp carries native code (uvloop, httptools) for; the build Python's own
# version is always one of them and the only one whose bytecode is precompiled.
TARGET_PYTHONS=${TARGET_PYTHONS:-"3.11 3.12 3.13"}
# uvicorn[standard] extras that the appliance never loads: watchfiles (--reload), websockets
# (WebSocket routes; the box has none), PyYAML (YAML log configs), python-dotenv (--env-file).
# Left out unless ingress-box itself requires one directly.
UNUSED="watchfiles websockets pyyaml python-dotenv"

"$PYTHON" - <<'EOF'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"build_single_file: needs Python 3.11+ to build, not {sys.version.split()[0]}")
EOF
BUILD_PY=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || echo 315532800)
fi
export SOURCE_DATE_EPOCH PYTHONHASHSEED=0 PIP_DISABLE_PIP_VERSION_CHECK=1
PIP_QUIET=(--quiet)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ingress-box-build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"
started=$(date +%s)

echo "== tools: shiv $SHIV_VERSION (Python $BUILD_PY)"
"$PYTHON" -m venv "$WORK/tools"
TOOLS=$WORK/tools/bin
# pip, minus the noise of a pip.conf that names local indexes absent here (keeps pip's status).
pip_() { "$TOOLS/pip" "$@" 2> >(grep -v -e 'is ignored: it is neither' >&2); }
pip_ install "${PIP_QUIET[@]}" "shiv==$SHIV_VERSION"

echo "== source: the checkout's files (tracked and untracked, not ignored)"
mkdir -p "$WORK/src"
if git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
    (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard \
        | xargs -0 -I{} sh -c 'test -e "{}" && printf "%s\0" "{}"' \
        | tar --null -T - -cf -) | tar -C "$WORK/src" -xf -
else
    tar -C "$ROOT" --exclude=.git --exclude=.venv --exclude=build --exclude=dist \
        --exclude='*.egg-info' -cf - . | tar -C "$WORK/src" -xf -
fi

echo "== wheels: the project and its dependencies"
constraint_args=()
[ -n "$CONSTRAINT" ] && constraint_args=(--constraint "$CONSTRAINT")
# (setuptools' deprecation notes on stderr go to a file: shown only if the build fails)
"$TOOLS/pip" wheel "${PIP_QUIET[@]}" "${constraint_args[@]}" --wheel-dir "$WORK/wheels" \
    "$WORK/src" 2>"$WORK/wheel.err" || { cat "$WORK/wheel.err" >&2; exit 1; }

echo "== site-packages for Python $BUILD_PY"
pip_ install "${PIP_QUIET[@]}" --no-compile --no-index --find-links "$WORK/wheels" \
    "${constraint_args[@]}" --target "$WORK/site" ingress-box
# The resolved versions, as a constraints file (--constraint) for the other interpreters.
"$PYTHON" - "$WORK/site" > "$WORK/lock.txt" <<'EOF'
import sys
from importlib.metadata import distributions
for d in sorted(distributions(path=[sys.argv[1]]), key=lambda d: d.metadata["Name"].lower()):
    print(f"{d.metadata['Name']}=={d.version}")
EOF

arch=$(uname -m)
platforms=()
for tag in manylinux_2_28 manylinux_2_17 manylinux2014 manylinux_2_5 manylinux1; do
    platforms+=(--platform "${tag}_${arch}")
done
for version in $TARGET_PYTHONS; do
    [ "$version" = "$BUILD_PY" ] && continue
    abi=cp${version/./}
    echo "== native parts for Python $version"
    if ! pip_ install "${PIP_QUIET[@]}" --no-compile --only-binary=:all: \
            --find-links "$WORK/wheels" --constraint "$WORK/lock.txt" \
            --python-version "$version" --implementation cp --abi "$abi" "${platforms[@]}" \
            --target "$WORK/site-$version" ingress-box; then
        echo "build_single_file: no wheels for Python $version; it is left out" >&2
        rm -rf "$WORK/site-$version"
    fi
done

echo "== trim, merge, strip, compile"
"$PYTHON" - "$WORK" "$BUILD_PY" "$UNUSED" <<'EOF'
"""Merge the other interpreters' native files into site/, drop unused distributions and
console scripts, strip debug info from shared objects, precompile bytecode, print the build id."""
import filecmp
import hashlib
import re
import shutil
import subprocess
import sys
from importlib.metadata import distributions
from pathlib import Path

work, build_py, unused = Path(sys.argv[1]), sys.argv[2], sys.argv[3].split()
site = work / "site"


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def trim(folder: Path) -> None:
    """Drop console scripts (their shebangs name this build's venv) and their RECORD lines, and
    the unused distributions (unless ingress-box requires one directly)."""
    shutil.rmtree(folder / "bin", ignore_errors=True)
    for record in sorted(folder.glob("*.dist-info/RECORD")):
        lines = record.read_text().splitlines(keepends=True)
        record.write_text("".join(line for line in lines if not line.startswith("../")))
    dists = list(distributions(path=[str(folder)]))
    box = next(d for d in dists if canon(d.metadata["Name"]) == "ingress-box")
    direct = {canon(re.split(r"[\s\[<>=!~;(]", r, maxsplit=1)[0]) for r in (box.requires or [])
              if "extra ==" not in r}
    for dist in dists:
        shown = f"{dist.metadata['Name']} {dist.version}"
        name = canon(dist.metadata["Name"])
        if name not in {canon(u) for u in unused} or name in direct:
            continue
        for file in dist.files or []:
            target = folder / file
            if target.is_file():
                target.unlink()
        shutil.rmtree(Path(dist._path), ignore_errors=True)  # type: ignore[attr-defined]
        if folder == site:
            print(f"left out {shown} (not used by the appliance)")
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        if not any(sub.iterdir()):
            sub.rmdir()


trim(site)
for other in sorted(work.glob("site-*")):
    trim(other)
    for path in sorted(p for p in other.rglob("*") if p.is_file()):
        rel = path.relative_to(other)
        if rel.parts[0].endswith(".dist-info"):
            continue  # metadata of the same versions: site/'s is kept
        mine = site / rel
        if not mine.exists():
            mine.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, mine)
        elif not filecmp.cmp(path, mine, shallow=False):
            sys.exit(f"{rel} differs between Python {build_py} and {other.name}: the interpreters "
                     "resolved different versions")
    shutil.rmtree(other)

strip = shutil.which("strip")
for so in sorted(site.rglob("*.so")):
    if strip:
        subprocess.run([strip, "--strip-debug", str(so)], check=True)
if not strip:
    print("note: no `strip` on PATH (binutils); shared objects keep their debug info")

# -s: file names in the bytecode relative to site-packages, not this build's temporary folder
# (the import system points them at the real file when it loads them).
subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "1", "-s", str(site),
                "--invalidation-mode", "checked-hash", str(site)], check=True)
digest = hashlib.sha256()
for path in sorted(p for p in site.rglob("*") if p.is_file()):
    digest.update(str(path.relative_to(site)).encode() + b"\0" + path.read_bytes() + b"\0")
(work / "build_id").write_text(digest.hexdigest())
EOF

echo "== zipapp"
cat > "$WORK/preamble.py" <<'EOF'
# Run by shiv's bootstrap before the entry point: fail clearly on an interpreter without wheels.
import sys

if sys.version_info < (3, 11):
    sys.exit(f"ingress-box needs Python 3.11 or newer; this is {sys.version.split()[0]}")
try:
    import uvloop  # noqa: F401  (the native parts: present only for the bundled versions)
except ImportError:
    sys.exit(f"ingress-box.pyz carries no native wheels for Python "
             f"{sys.version_info[0]}.{sys.version_info[1]}: run it with python3.11, 3.12 or 3.13")
EOF
"$TOOLS/shiv" --site-packages "$WORK/site" --console-script ingress-box \
    --python '/usr/bin/env python3' --compressed --reproducible \
    --build-id "$(cat "$WORK/build_id")" --preamble "$WORK/preamble.py" \
    --output-file "$WORK/ingress-box.pyz" >/dev/null
# shiv leaves bytecode out of the archive; add it, so a first run only unpacks (no compiling).
"$PYTHON" - "$WORK/site" "$WORK/ingress-box.pyz" <<'EOF'
import os
import sys
import time
import zipfile
from pathlib import Path

site, archive = Path(sys.argv[1]), sys.argv[2]
stamp = time.gmtime(max(int(os.environ["SOURCE_DATE_EPOCH"]), 315532800))[:6]
with zipfile.ZipFile(archive, "a", compression=zipfile.ZIP_DEFLATED) as zf:
    for pyc in sorted(site.rglob("*.pyc")):
        info = zipfile.ZipInfo("site-packages/" + pyc.relative_to(site).as_posix(), stamp)
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = 0o100644 << 16
        zf.writestr(info, pyc.read_bytes())
EOF
chmod 755 "$WORK/ingress-box.pyz"
mv "$WORK/ingress-box.pyz" "$OUT/ingress-box.pyz"
cp "$WORK/lock.txt" "$OUT/ingress-box.pyz.lock"
(cd "$OUT" && sha256sum ingress-box.pyz > ingress-box.pyz.sha256)
echo "built $OUT/ingress-box.pyz ($(du -h "$OUT/ingress-box.pyz" | cut -f1)," \
     "sha256 $(cut -c1-16 "$OUT/ingress-box.pyz.sha256")...) in $(( $(date +%s) - started )) s"

if [ "$PYINSTALLER" = 1 ]; then
    echo "== PyInstaller $PYINSTALLER_VERSION one-file binary"
    pyi_started=$(date +%s)
    pip_ install "${PIP_QUIET[@]}" "pyinstaller==$PYINSTALLER_VERSION"
    pip_ install "${PIP_QUIET[@]}" --no-index --find-links "$WORK/wheels" \
        --constraint "$WORK/lock.txt" ingress-box
    printf 'from ingress_box.cli.main import main\n\nmain(prog_name="ingress-box")\n' \
        > "$WORK/entry.py"
    "$TOOLS/pyinstaller" --onefile --noconfirm --clean --log-level WARN --strip \
        --name ingress-box --collect-submodules uvicorn --collect-submodules ingress_box \
        --collect-data ingress_box --copy-metadata ingress-box \
        --distpath "$OUT" --workpath "$WORK/pyi" --specpath "$WORK" "$WORK/entry.py"
    echo "built $OUT/ingress-box ($(du -h "$OUT/ingress-box" | cut -f1))" \
         "in $(( $(date +%s) - pyi_started )) s"
fi
