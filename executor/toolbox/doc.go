// Package toolbox owns the protocol between an executor and the toolbox binary (cmd/toolbox) that
// runs a task's steps inside the task's main container, and the toolbox's runner itself.
//
// The executor bind-mounts the toolbox binary and a shared directory (DefaultDir in the container)
// into the main container and runs `toolbox run`. The image needs nothing of ours: the toolbox is
// static and uses nothing from the image but the shell each run step names. Everything the two
// sides say to each other goes through files in the shared directory:
//
//	task.json                  TaskFile, written by the executor before the container starts
//	start                      created by the executor when the steps may start (services are up)
//	stop                       created by the executor to stop the task (SIGTERM/SIGINT work too)
//	steps/<i>.json             StepResult of step i, replaced atomically when it starts and ends
//	steps/<i>.log              combined stdout and stderr of step i, written as it is produced
//	steps/<i>.sh               the command of run step i, as given to the shell
//	archives/<i>.tar           the workspace archive of saveToWorkspace step i, renamed into place
//	                           once complete
//	workspace/<source>/<i>.tar archives of parent task <source> (an ExecutorTask name), copied there
//	                           by the executor for restoreWorkspace steps
//
// The task can write all of it (the Docker driver bind-mounts it read-write), so the executor opens
// these files only through OpenFile, CheckFile, ReadResult, Start and Stop (files.go): relative to
// the directory, following no symbolic link, regular files with one link only, within Limits.
//
// i is the index of the step in TaskFile.Steps, from 0. A step without steps/<i>.json was not
// started; once a step fails or is stopped, no later step gets one.
//
// In a pod (the Kubernetes driver) the executor shares no directory with the toolbox. An init
// container runs `toolbox install` (Install), which copies the toolbox into the pod's shared
// volume, makes the directories above writable by any user and fetches workspace/ from the
// executor. The main container runs `toolbox run --stream --task FILE`: the steps start at once,
// the files above are written all the same, and the toolbox also writes them to its stdout as
// frames, one per line, each FramePrefix followed by a JSON object:
//
//	{"t":"log","i":N,"o":O,"d":"<base64>"}    the bytes of steps/<N>.log from offset O
//	{"t":"result","i":N,"r":{<StepResult>}}   steps/<N>.json was just written
//	{"t":"archive","i":N,"d":"<base64>"}      the next bytes of archives/<N>.tar, before the final
//	                                          result of saveToWorkspace step N
//	{"t":"archive-end","i":N,"n":<size>}      archives/<N>.tar is complete
//
// The executor reads them back from the pod's log with Demux, which recreates the files in a
// directory of its own (appending to the logs by offset when it reads the pod's log again). Nothing else goes to stdout (the toolbox's own log is on stderr), and on
// exit the toolbox writes the steps' results to the container's termination message too
// (ParseTermination), which Kubernetes keeps even once the log is gone.
//
// The toolbox exits 0 when every step succeeded, 1 when a step failed, 2 when it was stopped (while
// waiting for start, too) and 3 when it could not run at all (task.json missing or invalid, shared
// directory not writable); in that last case the reason is only in the container's log.
package toolbox
