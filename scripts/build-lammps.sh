#!/usr/bin/env bash
# Build a LAMMPS executable with `pair_style metatomic` (package ML-METATOMIC) and
# lorem_mta's `pair_style lorem` (lammps/LOREM) for lorem_mta.
#
# usage: bash scripts/build-lammps.sh [DIR]
#
#   DIR  where DIR/lmp goes (default ${LOREM_LAMMPS_DIR:-$HOME/.cache/lorem_mta/lammps});
#        sources and build tree go to DIR/work. The folder lives outside the clone, so
#        that a machine builds LAMMPS once (per TORCH_PY environment) for all CI runs.
#
# Environment:
#   LAMMPS_SRC  folder with lammps-mta-src.tar.xz and triclinic-cell-shifts.patch
#               (default: ../shared/lammps next to the repository)
#   MPI         ON, OFF or auto (default auto: ON when mpicxx is installed; Debian:
#               apt-get install -y openmpi-bin libopenmpi-dev)
#   JOBS        parallel compile jobs (default 2); every compile runs under `nice -n 19`
#   TORCH_PY    python with torch 2.13, metatensor-torch 0.10 and metatomic-torch 0.1
#               (default: the project's .venv/bin/python, created by scripts/setup-venv.sh)
#   FORCE=1     rebuild even if DIR/lmp is up to date
#
# DIR/lmp is rebuilt only when the source tarball, the patch, the LAMMPS-side code of
# this repository (lammps/), the torch version or the MPI choice changed: the build
# records them in DIR/build-info.txt. The executable finds libtorch and the metatensor
# libraries of TORCH_PY's wheels through its RPATH, so keep that environment in place.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${1:-${LOREM_LAMMPS_DIR:-$HOME/.cache/lorem_mta/lammps}}
LAMMPS_SRC=${LAMMPS_SRC:-$ROOT/../shared/lammps}
JOBS=${JOBS:-2}
TORCH_PY=${TORCH_PY:-$ROOT/.venv/bin/python}
MPI=${MPI:-auto}
if [ "$MPI" = auto ]; then
    if command -v mpicxx > /dev/null; then MPI=ON; else MPI=OFF; fi
fi

TARBALL=$LAMMPS_SRC/lammps-mta-src.tar.xz
PATCH=$LAMMPS_SRC/triclinic-cell-shifts.patch
for file in "$TARBALL" "$PATCH"; do
    if [ ! -f "$file" ]; then
        echo "build-lammps: $file not found (set LAMMPS_SRC)" >&2
        exit 1
    fi
done
if [ ! -x "$TORCH_PY" ]; then
    echo "build-lammps: $TORCH_PY not found: run scripts/setup-venv.sh or set TORCH_PY" >&2
    exit 1
fi

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
WORK=$DIR/work

# what the executable depends on; a change triggers a rebuild
stamp() {
    echo "source $(sha256sum < "$TARBALL" | cut -c1-16)"
    echo "patch $(sha256sum < "$PATCH" | cut -c1-16)"
    if [ -d "$ROOT/lammps" ]; then
        echo "lorem-lammps $(cd "$ROOT" && find lammps -type f \( -name '*.cpp' -o -name '*.h' -o -name '*.cmake' \) -print0 | sort -z | xargs -0 cat | sha256sum | cut -c1-16)"
    fi
    echo "torch $("$TORCH_PY" -c 'import torch; print(torch.__version__)')"
    echo "torch-python $TORCH_PY"
    echo "mpi $MPI"
}
WANTED=$(stamp)
if [ "${FORCE:-0}" != 1 ] && [ -x "$DIR/lmp" ] && [ -f "$DIR/build-info.txt" ] \
    && [ "$(cat "$DIR/build-info.txt")" = "$WANTED" ]; then
    echo "build-lammps: $DIR/lmp is up to date"
    exit 0
fi

start=$(date +%s)
PREFIX=$("$TORCH_PY" -c 'import torch, metatensor, metatensor.torch, metatomic.torch; print(";".join([torch.utils.cmake_prefix_path, metatensor.utils.cmake_prefix_path, metatensor.torch.utils.cmake_prefix_path, metatomic.torch.utils.cmake_prefix_path]))')

# sources: the trimmed LAMMPS tree with ML-METATOMIC and the triclinic cell-shift fix,
# unpacked again only when they changed (so that rebuilds are incremental)
mkdir -p "$WORK"
SOURCE_STAMP="$(sha256sum < "$TARBALL" | cut -c1-16) $(sha256sum < "$PATCH" | cut -c1-16)"
if [ "$(cat "$WORK/lammps-mta/.lorem-source" 2> /dev/null)" != "$SOURCE_STAMP" ]; then
    rm -rf "$WORK/lammps-mta"
    tar -xf "$TARBALL" -C "$WORK"
    patch -s -p1 -d "$WORK/lammps-mta" < "$PATCH"
    echo "$SOURCE_STAMP" > "$WORK/lammps-mta/.lorem-source"
fi
# pair_style lorem (lammps/LOREM, GPL-2) is compiled as part of the ML-METATOMIC package;
# files are copied only when they differ, so that unchanged ones are not recompiled
PACKAGE=$WORK/lammps-mta/src/ML-METATOMIC
if [ -d "$ROOT/lammps/LOREM" ]; then
    for file in "$ROOT"/lammps/LOREM/*.cpp "$ROOT"/lammps/LOREM/*.h; do
        if ! cmp -s "$file" "$PACKAGE/$(basename "$file")"; then cp "$file" "$PACKAGE/"; fi
    done
fi

GENERATOR=()
if command -v ninja > /dev/null; then GENERATOR=(-G Ninja); fi
echo "build-lammps: configuring (MPI=$MPI) in $WORK/build"
# -DFMT_CONSTEVAL=: the torch 2.13 wheels force C++20, which the fmt bundled with
# LAMMPS 27Jun2024 rejects otherwise
nice -n 19 cmake -S "$WORK/lammps-mta/cmake" -B "$WORK/build" "${GENERATOR[@]}" \
    -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$PREFIX" \
    -DBUILD_MPI="$MPI" \
    -DPKG_ML-METATOMIC=ON \
    -DDOWNLOAD_POTENTIALS=OFF \
    -DWITH_JPEG=OFF -DWITH_PNG=OFF -DWITH_FFMPEG=OFF -DWITH_GZIP=OFF \
    -DCMAKE_CXX_FLAGS="-DFMT_CONSTEVAL=" \
    > "$WORK/configure.log" 2>&1 || { tail -30 "$WORK/configure.log" >&2; exit 1; }
echo "build-lammps: compiling with $JOBS jobs (log: $WORK/build.log)"
nice -n 19 cmake --build "$WORK/build" -j "$JOBS" > "$WORK/build.log" 2>&1 \
    || { tail -30 "$WORK/build.log" >&2; exit 1; }

cp "$WORK/build/lmp" "$DIR/lmp.new"
mv "$DIR/lmp.new" "$DIR/lmp"
"$DIR/lmp" -h > "$WORK/lmp-help.txt"
for style in metatomic lorem; do
    if [ "$style" = lorem ] && [ ! -d "$ROOT/lammps/LOREM" ]; then continue; fi
    if ! grep -qw "$style" "$WORK/lmp-help.txt"; then
        echo "build-lammps: $DIR/lmp does not list pair style $style" >&2
        exit 1
    fi
done
echo "$WANTED" > "$DIR/build-info.txt"
echo "build-lammps: built $DIR/lmp (MPI=$MPI) in $(($(date +%s) - start)) s"
