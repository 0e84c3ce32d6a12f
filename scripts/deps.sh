# Sourced by scripts/test and scripts/demo: installs, from Debian's packages, what the build needs
# and this machine lacks. Quiet and quick when everything is already there.
eigenformer_install_deps() {
  local packages=(g++ cmake make pkgconf libeigen3-dev nlohmann-json3-dev libgtest-dev libbenchmark-dev libsentencepiece-dev "$@")
  local missing=()
  local p
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "== installing: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
