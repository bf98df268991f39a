#!/usr/bin/env bash
# Reproducer: `cryptsetup reencrypt --resume-only` reports success and destroys every sector
# when the re-encryption was stopped after its last hotzone was committed but before its
# final metadata commit (cryptsetup 2.6.1; the same code is on main).
#
# Self-contained: plain cryptsetup on a file (offline, no device-mapper, no root needed for
# the image itself), strace to stop cryptsetup at its Nth write(2), and a userspace check that
# decrypts the data with the volume key cryptsetup prints (python3 + the `cryptography`
# module; Debian: apt-get install cryptsetup-bin strace python3-cryptography).
#
#   ./reencrypt-resume-repro.sh [WORKDIR]        # prints one line per kill point
#
# For every N in 1..(writes of a full run)+1, on a fresh copy of the same volume:
#   strace -f -e inject=write:signal=KILL:when=N cryptsetup reencrypt ...   (killed on entering
#   its Nth write: writes 1..N-1 reached the file), then on two copies of that state:
#   A: cryptsetup reencrypt --resume-only;  B: cryptsetup repair, then --resume-only;
# and the plaintext of each is checked (all zeros were encrypted).
set -euo pipefail
W=${1:-$(mktemp -d)}
mkdir -p "$W"; cd "$W"
printf 'repro-passphrase' > pass
KDF=(--pbkdf pbkdf2 --pbkdf-force-iterations 1000)
RE=(reencrypt --batch-mode --force-offline-reencrypt "${KDF[@]}" --key-file=pass)

# 8 MiB of zeros, encrypted in place (LUKS2, 16 MiB header), trimmed to header + data.
head -c $((8 << 20)) /dev/zero > base.img
truncate -s $((40 << 20)) base.img
cryptsetup reencrypt --encrypt --type luks2 --batch-mode --force-offline-reencrypt \
    --reduce-device-size 32M "${KDF[@]}" --key-file=pass base.img >/dev/null
OFF=$(cryptsetup luksDump --dump-json-metadata base.img |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["segments"]["0"]["offset"])')
truncate -s $((OFF + (8 << 20))) base.img

cat > check.py <<'PY'
# check.py IMG DUMP: decrypt the data of IMG with the volume key in DUMP (cryptsetup luksDump
# --dump-volume-key output); all of it was zeros.
import json, re, subprocess, sys
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
img, dump = sys.argv[1], open(sys.argv[2]).read()
m = re.search(r"MK dump:\s*((?:[0-9a-fA-F]{2}\s+)+)", dump + "\n")
if not m:
    sys.exit(print("refused: no volume key"))
vk = bytes.fromhex(re.sub(r"\s+", "", m.group(1)))
meta = json.loads(subprocess.run(["cryptsetup", "luksDump", "--dump-json-metadata", img],
                                 capture_output=True, text=True, check=True).stdout)
seg = meta["segments"]["0"]
off, ss = int(seg["offset"]), int(seg.get("sector_size", 512))
with open(img, "rb") as f:
    f.seek(off)
    data = f.read(8 << 20)
bad = 0
for blk in range(0, len(data), 4096):
    for s in range(blk, blk + 4096, ss):  # plain64 IV: the 512-byte sector number
        iv = (s // 512).to_bytes(16, "little")
        if Cipher(algorithms.AES(vk), modes.XTS(iv)).decryptor().update(data[s:s + ss]) != bytes(ss):
            bad += 1
            break
print("intact" if not bad else f"DESTROYED ({bad} of {len(data) // 4096} 4-KiB blocks wrong)")
PY
cat > state.py <<'PY'
# state.py: one line for a LUKS2 JSON dump on stdin: requirement, data segments -> digest, keyslots
import json, sys
d = json.load(sys.stdin)
req = d["config"].get("requirements", {}).get("mandatory", [])
dig = {s: k for k, v in d["digests"].items() for s in v["segments"]}
segs = []
for k, v in d["segments"].items():
    flags = v.get("flags", [])
    if not flags or "in-reencryption" in flags:
        segs.append(f"seg{k}{'(hot)' if flags else ''}->d{dig.get(k, '-')}")
ks = [k for k, v in d["keyslots"].items() if v["type"] == "luks2"]
print(("REENCRYPT " if req else "plain ") + " ".join(segs) + " keyslots:" + ",".join(ks))
PY

check() {  # check IMG -> intact | DESTROYED (...) | refused: <why>
  if cryptsetup luksDump --dump-json-metadata "$1" 2>/dev/null | grep -q online-reencrypt; then
    echo "refused: still marked for re-encryption"; return
  fi
  cryptsetup luksDump --batch-mode --dump-volume-key --key-file=pass "$1" > vk.txt 2>/dev/null || true
  python3 check.py "$1" vk.txt
  rm -f vk.txt
}

cp base.img full.img
strace -f -qq -o full.trace -e trace=write cryptsetup "${RE[@]}" full.img >/dev/null
TOTAL=$(grep -c 'write(' full.trace)
echo "cryptsetup: $(cryptsetup --version)"
echo "full re-encryption of an 8 MiB volume: $TOTAL write(2) calls; data after it: $(check full.img)"
printf '%-4s %-58s %-6s %-40s %-6s %s\n' N "on-disk state after the kill" resume "resume-only alone" repair "repair, then resume-only"
for N in $(seq 1 $((TOTAL + 1))); do
  cp base.img k.img
  ( strace -f -qq -o /dev/null -e inject=write:signal=KILL:when=$N cryptsetup "${RE[@]}" k.img \
      >/dev/null 2>&1 || true ) 2>/dev/null
  STATE=$(cryptsetup luksDump --dump-json-metadata k.img 2>/dev/null | python3 state.py 2>/dev/null \
          || echo "no valid header")
  cp k.img a.img; cp k.img b.img
  cryptsetup reencrypt --batch-mode --force-offline-reencrypt --resume-only --key-file=pass a.img >/dev/null 2>&1 && RA=0 || RA=$?
  cryptsetup repair --batch-mode --key-file=pass b.img >/dev/null 2>&1 && RB1=0 || RB1=$?
  cryptsetup reencrypt --batch-mode --force-offline-reencrypt --resume-only --key-file=pass b.img >/dev/null 2>&1 && RB=0 || RB=$?
  printf '%-4s %-58s %-6s %-40s %-6s %s\n' "$N" "$STATE" "$RA" "$(check a.img)" "$RB1/$RB" "$(check b.img)"
done
rm -f k.img a.img b.img full.img check.py state.py
