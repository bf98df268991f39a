# PID 1 of the byok User-Mode Linux guest (run as: init=/bin/sh -- guest_init.sh PYTHON JOB RESULT).
# The root filesystem is the host's / through hostfs, mounted read-only: the guest can run the
# host's cryptsetup and Python, and writes only to tmpfs and to its ubd block devices.
# Scratch space is a tmpfs on /run only: /tmp stays the host's (read-only) view, because the
# checkout and its venv may live under /tmp (CI clones do).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/run/home TMPDIR=/run/tmp
export PYTHONDONTWRITEBYTECODE=1 LANG=C.UTF-8
mount -t proc proc /proc
mount -t sysfs sys /sys
mountpoint -q /dev || mount -t devtmpfs dev /dev
mount -t tmpfs run /run
mkdir -p /run/cryptsetup /run/lock /run/home /run/tmp
K=/usr/lib/uml/modules/$(uname -r)/kernel
for m in crypto/ecb crypto/cbc crypto/hmac crypto/sha512_generic crypto/gf128mul crypto/xts \
         security/keys/encrypted-keys/encrypted-keys drivers/md/dm-mod drivers/md/dm-crypt \
         crypto/af_alg crypto/algif_skcipher crypto/algif_hash; do
  busybox insmod "$K/$m.ko" 2>/dev/null || echo "BYOK-INSMOD-FAILED $m"
done
echo "BYOK-BOOTED"
"$1" -m byok.guest_agent "$2" "$3"
echo "BYOK-AGENT-EXIT $?"
sync
echo o > /proc/sysrq-trigger
sleep 10
