#!/usr/bin/env bash
# Copy the VM's experiment results back to the host: run on the host by the Vagrantfile's
# trigger after `vagrant up` / `vagrant provision` (or by hand). It does not rely on the synced
# folder, which for Debian's boxes is often a one-way rsync (host -> VM): results travel as a tar
# stream over `vagrant ssh`.
#
#   scripts/vagrant-fetch-results.sh [HOST_DIR]     (default: ./results)
#
# Environment: BYOK_VM_RESULTS (default /var/lib/byok/results), VAGRANT (default vagrant).
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."   # where the Vagrantfile is: `vagrant ssh` needs it
dest=${1:-results}
src=${BYOK_VM_RESULTS:-/var/lib/byok/results}
vagrant=${VAGRANT:-vagrant}
mkdir -p "$dest"
# -n: no stdin for ssh; the remote side streams a tar of every run directory.
"$vagrant" ssh -c "sudo tar -C '$src' -cf - ." -- -n -q | tar -C "$dest" -xf -
echo "[vagrant] results of the VM copied to $dest/:"
ls -1 "$dest"
