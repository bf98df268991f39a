#!/bin/busybox sh
# PID 1 of byok's QEMU guests, inside the initramfs byok builds (byok/guest/kernel.py).
# Loads the modules (insmod, in the order the host computed), mounts the host's / read-only
# over 9p and switches to it, then runs the common guest init (byok/guest/init.sh) there.
# The kernel command line carries byok.init=, byok.py=, byok.job=, byok.result=.
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
/bin/busybox --install -s /bin
export PATH=/bin
while read -r m; do
  insmod "/modules/$m" 2>/dev/null || echo "BYOK-INSMOD-FAILED $m"
done < /modules/order
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    byok.init=*) INIT=${arg#byok.init=} ;;
    byok.py=*) PY=${arg#byok.py=} ;;
    byok.job=*) JOB=${arg#byok.job=} ;;
    byok.result=*) RESULT=${arg#byok.result=} ;;
  esac
done
if ! mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /newroot; then
  echo "BYOK-ROOT-FAILED could not mount the host's / over 9p"
  poweroff -f
fi
mount --move /dev /newroot/dev
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
exec switch_root /newroot /bin/sh "$INIT" "$PY" "$JOB" "$RESULT" -
