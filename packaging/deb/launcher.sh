#!/bin/sh
# The fusesync command: the python of the virtualenv this script lies in, wherever the
# package's tree was unpacked (/usr/bin/fusesync is a relative link to this file).
# -I: no current directory or PYTHON* variables on the path of a system command.
here=$(readlink -f -- "$0")
exec "${here%/*}/python3" -I -m fusesync.cli "$@"
