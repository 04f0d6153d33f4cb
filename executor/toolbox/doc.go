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
// i is the index of the step in TaskFile.Steps, from 0. A step without steps/<i>.json was not
// started; once a step fails or is stopped, no later step gets one.
//
// The toolbox exits 0 when every step succeeded, 1 when a step failed, 2 when it was stopped (while
// waiting for start, too) and 3 when it could not run at all (task.json missing or invalid, shared
// directory not writable); in that last case the reason is only in the container's log.
package toolbox
