# Sourced by the hack scripts that start daemons.

# daemon CMD...: runs CMD in the background in a session of its own, stdin from /dev/null, holding
# none of the descriptors this script inherited beyond stdout and stderr: a caller's flock(1) lock,
# say, which the daemon would otherwise hold for as long as it runs. $! is its pid.
daemon() {
  (
    for fd in /proc/"$BASHPID"/fd/*; do
      fd=${fd##*/}
      case $fd in 0 | 1 | 2 | 255) ;; *) eval "exec $fd>&-" ;; esac
    done
    exec setsid "$@" </dev/null
  ) &
}
