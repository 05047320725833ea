# Sourced by bin/smallvision and bin/test: set up the venv, and find the shared data sets
# beside the checkout when SMALLVISION_DATA is not set.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/bin/setup-venv"
if [ -z "${SMALLVISION_DATA:-}" ] && [ -d "$root/../shared/datasets" ]; then
    export SMALLVISION_DATA="$(cd "$root/../shared/datasets" && pwd)"
fi
