#!/usr/bin/env bash
# Open MPI for kiln-distributed (its tests run `mpirun`), and libclang for the bindgen step of
# the `mpi` crate (rsmpi) that generates the bindings against the installed MPI headers.
set -euo pipefail
if command -v mpirun >/dev/null && [ -e /usr/include/x86_64-linux-gnu/mpi/mpi.h -o -e /usr/lib/x86_64-linux-gnu/openmpi/include/mpi.h ] \
    && ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
$SUDO apt-get update -q
$SUDO apt-get install -y -q openmpi-bin libopenmpi-dev libclang-dev pkg-config
