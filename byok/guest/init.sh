# The guest's init, common to every booting backend (run as: sh init.sh PYTHON JOB RESULT MODLIST).
# The root filesystem is the host's / (UML hostfs, or 9p under QEMU), mounted read-only: the
# guest runs the host's cryptsetup and Python, and writes only to tmpfs and its block devices.
# Scratch space is a tmpfs on /run only: /tmp stays the host's (read-only) view, because the
# checkout and its venv may live under /tmp (CI clones do). MODLIST is a file of module paths to
# insmod in order (UML), or "-" when the initramfs loaded them already (QEMU).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/run/home TMPDIR=/run/tmp
export PYTHONDONTWRITEBYTECODE=1 LANG=C.UTF-8
mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sys /sys
mountpoint -q /dev || mount -t devtmpfs dev /dev
mount -t tmpfs run /run
mkdir -p /run/cryptsetup /run/lock /run/home /run/tmp
if [ "$4" != "-" ]; then
  while read -r m; do
    busybox insmod "$m" 2>/dev/null || echo "BYOK-INSMOD-FAILED $m"
  done < "$4"
fi
echo "BYOK-BOOTED"
"$1" -m byok.guest.agent "$2" "$3"
echo "BYOK-AGENT-EXIT $?"
sync
echo o > /proc/sysrq-trigger
sleep 10
