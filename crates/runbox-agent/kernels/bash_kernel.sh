# runbox bash kernel: one shell per code context, driven by the agent.
#
# Protocol: fd 0 is, at start, a unix socket to the agent; it moves to fd 3 and stdin becomes
# /dev/null. A cell arrives as its code followed by a NUL byte; the shell evals it at top
# level (so `declare`, `cd`, functions and variables persist) and answers with one JSON line
# on fd 3: {"ev":"done","status":N}. Cells run with fd 3 closed, so they cannot write to the
# channel.
#
# Interrupts: SIGINT to the process group kills the foreground command and runs the trap,
# which breaks out of every loop (a builtin busy loop included) back to the serving loop.
# `break 1000` leaves the serving loop too, so the loop is kept in a variable and re-entered
# with eval after each interrupt.
__rb_serve='while :; do
  IFS= read -r -d "" __rb_cell <&3
  __rb_rs=$?
  if [ "$__rb_rs" -ne 0 ]; then
    [ "$__rb_rs" -gt 128 ] && continue
    exit 0
  fi
  __rb_busy=1 __rb_intr=
  for __rb_once in 1; do eval "$__rb_cell"; done 3>&-
  __rb_st=$?
  __rb_busy=
  [ -n "$__rb_intr" ] && __rb_st=130
  printf "{\"ev\":\"done\",\"status\":%d}\n" "$__rb_st" >&3
done
if [ -n "$__rb_busy" ]; then
  __rb_busy=
  printf "{\"ev\":\"done\",\"status\":130}\n" >&3
fi
eval "$__rb_serve"'
exec 3<&0 </dev/null
__rb_busy=
trap 'if [ -n "$__rb_busy" ]; then __rb_intr=1; break 1000 2>/dev/null; fi' INT
printf '{"ev":"ready"}\n' >&3
eval "$__rb_serve"
