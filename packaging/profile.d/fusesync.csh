# fusesync first login, for csh and tcsh (installed in /etc/csh/login.d).
#
# The same as fusesync.sh, which says what it does and why: on a user's first login on
# this machine, run `fusesync pull default` (or mount) in the background as
# /etc/fusesync/config.toml says (first_login), never holding up the login. The checks
# are csh; the job is the same sh command as in fusesync.sh: keep the two in step.
if ( `id -u` != 0 && $?HOME ) then
    which fusesync >& /dev/null
    if ( $status == 0 ) then
        if ( $?FUSESYNC_SITE_CONFIG ) then
            set _fusesync_site = "$FUSESYNC_SITE_CONFIG"
        else
            set _fusesync_site = /etc/fusesync/config.toml
        endif
        if ( $?XDG_STATE_HOME ) then
            set _fusesync_state = "$XDG_STATE_HOME/fusesync"
        else
            set _fusesync_state = "$HOME/.local/state/fusesync"
        endif
        set _fusesync_mode = ""
        if ( -r "$_fusesync_site" && ! -e "$_fusesync_state/first-login" ) then
            set _fusesync_mode = `sed -n 's/^[[:space:]]*first_login[[:space:]]*=[^a-z]*\([a-z]*\).*/\1/p' "$_fusesync_site"`
        endif
        if ( "$_fusesync_mode" == pull || "$_fusesync_mode" == mount ) then
            ( umask 077; mkdir -p "$_fusesync_state" ) >& /dev/null
            if ( $status == 0 ) then
                ( /bin/sh -c 'trap "" HUP; (set -C; : >"$2/first-login") 2>/dev/null || exit 0; echo "$(date "+%Y-%m-%d %H:%M:%S") fusesync first login: $1 default"; fusesync "$1" default; s=$?; if [ $s = 0 ] || [ $s = 3 ]; then echo "fusesync first login: done"; else rm -f "$2/first-login"; echo "fusesync first login: failed (exit status $s); the next login tries again"; fi' fusesync-first-login "$_fusesync_mode" "$_fusesync_state" < /dev/null >>& "$_fusesync_state/first-login.log" & )
            endif
        endif
        unset _fusesync_site _fusesync_state _fusesync_mode
    endif
endif
