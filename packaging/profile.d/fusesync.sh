# fusesync first login, for sh-compatible login shells (installed in /etc/profile.d).
#
# On a user's first login on this machine, bring in their 'default' target the way the
# site settings say: `first_login = "pull"` or `"mount"` in /etc/fusesync/config.toml
# ($FUSESYNC_SITE_CONFIG overrides the path). The work runs in the background with its
# output in $XDG_STATE_HOME/fusesync/first-login.log, so a slow or unreachable store never
# holds up or breaks the login. Root is left alone. The marker
# $XDG_STATE_HOME/fusesync/first-login says it was done (a failed run removes it, so the
# next login tries again); creating it yourself turns the hook off for you.
# fusesync.csh does the same for csh and tcsh: keep the two in step.
if [ "$(id -u)" != 0 ] && [ -n "${HOME:-}" ] && command -v fusesync >/dev/null 2>&1; then
    _fusesync_site=${FUSESYNC_SITE_CONFIG:-/etc/fusesync/config.toml}
    _fusesync_state=${XDG_STATE_HOME:-$HOME/.local/state}/fusesync
    if [ -r "$_fusesync_site" ] && [ ! -e "$_fusesync_state/first-login" ]; then
        _fusesync_mode=$(sed -n 's/^[[:space:]]*first_login[[:space:]]*=[^a-z]*\([a-z]*\).*/\1/p' \
            "$_fusesync_site" 2>/dev/null)
        case $_fusesync_mode in
        pull | mount)
            # The job claims the marker (set -C: one login wins), runs `fusesync pull` or
            # `fusesync mount` (which pulls as it starts, so the remote files show at once),
            # and gives the marker back if that failed. The subshell around
            # it keeps it out of the login shell's jobs; it ignores the hangup of a short
            # login.
            if (umask 077 && mkdir -p "$_fusesync_state") 2>/dev/null; then
                (/bin/sh -c 'trap "" HUP; (set -C; : >"$2/first-login") 2>/dev/null || exit 0; echo "$(date "+%Y-%m-%d %H:%M:%S") fusesync first login: $1 default"; fusesync "$1" default; s=$?; if [ $s = 0 ] || [ $s = 3 ]; then echo "fusesync first login: done"; else rm -f "$2/first-login"; echo "fusesync first login: failed (exit status $s); the next login tries again"; fi' \
                    fusesync-first-login "$_fusesync_mode" "$_fusesync_state" \
                    </dev/null >>"$_fusesync_state/first-login.log" 2>&1 &)
            fi
            ;;
        esac
    fi
    unset _fusesync_site _fusesync_state _fusesync_mode
fi
