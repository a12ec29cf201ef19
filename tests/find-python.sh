#!/bin/sh
# Prints the path of a working CPython of version $1 (e.g. 3.12), or nothing.
# pyenv's shims answer only for the selected versions, so its versions are
# looked up directly as well.
version=$1
for candidate in "$(command -v "python$version" 2>/dev/null)" \
        "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$version".*/bin/"python$version" \
        /usr/local/bin/"python$version" /usr/bin/"python$version"; do
    if [ -x "$candidate" ] && "$candidate" -c 'import sys, venv' >/dev/null 2>&1; then
        echo "$candidate"
        exit 0
    fi
done
