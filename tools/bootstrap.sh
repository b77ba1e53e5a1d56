#!/usr/bin/env bash
# Set-up shared by `make run` and `make test`: system tools (ffmpeg/ffprobe >= 5.0, exiftool) and the
# project's virtual environment in .venv. Safe to run again; it only installs what is missing.
#   tools/bootstrap.sh          runtime dependencies
#   tools/bootstrap.sh dev      plus the test tools (pytest, ruff, imagehash, selenium, Chromium, mosquitto)
# VENV names another environment folder (the tests build one the way `make run` does).
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"

need_apt=()
ffmpeg_ok() {
  command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null || return 1
  local v
  v=$(ffmpeg -version | sed -n 's/^ffmpeg version n\{0,1\}\([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
  [ -n "$v" ] || return 0  # a git build prints no release number; trust it
  set -- $v
  [ "$1" -ge 5 ]  # 5.0: the noise filter's drop expression, which the video hash selects keyframes with
}
ffmpeg_ok || need_apt+=(ffmpeg)
command -v exiftool >/dev/null || need_apt+=(libimage-exiftool-perl)
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
if [ "$extra" = dev ]; then
  # The report test opens report.html in headless Chromium through its WebDriver.
  command -v chromium >/dev/null || need_apt+=(chromium)
  command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
  # The service tests publish job events to a real MQTT broker they start themselves.
  command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
  # A TrueType font for the text the OCR tests draw (tests/test_ocr.py).
  [ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need_apt+=(fonts-dejavu-core)
fi

if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "bootstrap: installing ${need_apt[*]} with apt-get" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "bootstrap: missing system packages. Run:" >&2
    echo "  sudo apt-get install -y ${need_apt[*]}" >&2
    exit 1
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.installed${extra:+-$extra}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e ".${extra:+[$extra]}"
  touch "$stamp"
fi
