# shellcheck shell=sh
set -e
src=$(findmnt -no SOURCE /)
dev=$(readlink -f "$src"); part=$(basename "$dev")
disk=$(basename "$(readlink -f /sys/class/block/"$part"/..)")
echo "source=$src"
echo "part=$part"
echo "disk=$disk"
echo "disk_sectors=$(cat /sys/class/block/"$disk"/size)"
echo "part_start=$(cat /sys/class/block/"$part"/start)"
echo "part_sectors=$(cat /sys/class/block/"$part"/size)"
echo "fs_bytes=$(df -B1 --output=size / | tail -n 1 | tr -d ' ')"
