# Shared environment for the project's scripts (sourced, not run).
# Tools installed by scripts/setup live outside the checkout so that every
# clone on a machine shares them.
export PLURESDB_TOOLS="${PLURESDB_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/pluresdb/tools}"
export PATH="$PLURESDB_TOOLS/bin:$PWD/node_modules/.bin:$HOME/.cargo/bin:$PATH"
export CHROMEDRIVER="${CHROMEDRIVER:-/usr/bin/chromedriver}"
export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
