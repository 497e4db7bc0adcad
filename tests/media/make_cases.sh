#!/bin/sh
# Makes the measuring cases in tests/media/cases/ (see tests/media/README.md): pictures whose pixels, display
# matrix, EXIF orientation or name disagree, and an MP4 whose moov lies past the first 256 KiB.
# Needs Debian's ffmpeg, libimage-exiftool-perl and libavif-bin (exiftool cannot write AVIF's irot, nor can
# ffmpeg 5.1's AVIF muxer). The suite reads the checked-in files and needs none of them.
set -eu
mkdir -p "$(dirname "$0")/cases/mislabelled"
cd "$(dirname "$0")/cases"
F="ffmpeg -hide_banner -loglevel error -y"
X264="-c:v libx264 -preset veryslow -crf 40 -pix_fmt yuv420p -an"
LANDSCAPE="-f lavfi -i testsrc2=size=320x180:rate=10:duration=1"
STILL="-f lavfi -i testsrc2=size=320x180:rate=1:duration=1 -frames:v 1"
EXIF="exiftool -q -overwrite_original"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# A phone held upright: landscape pixels, a display matrix turning them 90 degrees clockwise.
$F $LANDSCAPE $X264 rotated_90.mp4
$EXIF -Rotation=90 rotated_90.mp4
# The same as QuickTime, turned 270 degrees clockwise.
$F $LANDSCAPE $X264 -f mov rotated_270.mov
$EXIF -Rotation=270 rotated_270.mov
# A camera JPEG: landscape pixels, EXIF Orientation 6 ("rotate 90 CW").
$F $STILL -q:v 8 orientation_6.jpg
$EXIF -n -Orientation=6 orientation_6.jpg
# AVIF with irot angle 1 (90 degrees counter-clockwise, so 270 clockwise).
$F $STILL -pix_fmt rgb24 "$tmp/landscape.png"
avifenc -j 1 -s 6 --min 40 --max 63 --irot 1 "$tmp/landscape.png" irot_270.avif >/dev/null
# Named 9x16, really square.
$F -f lavfi -i testsrc2=size=320x320:rate=10:duration=1 $X264 mislabelled/9x16.mp4
# moov after the first 256 KiB: three frames of lossless noise make an mdat of ~266 KiB (ffmpeg writes moov last).
$F -f lavfi -i "nullsrc=size=180x320:rate=10,geq=lum='random(1)*255':cb=128:cr=128" -frames:v 3 \
   -c:v libx264 -preset ultrafast -qp 0 -pix_fmt yuv420p -an moov_after_head.mp4
