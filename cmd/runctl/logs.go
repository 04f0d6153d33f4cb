package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/executorhttp"
	"runservice.dev/runservice/internal/objectstore"
	"runservice.dev/runservice/internal/pki"
	"runservice.dev/runservice/internal/runops"
)

func newLogs(o *options) *cobra.Command {
	l := &logs{options: o, storeURL: objectstore.DefaultURL()}
	cmd := &cobra.Command{
		Use:   "logs RUN TASK [STEP]",
		Short: "Print the log of a task's steps",
		Long: `Prints the log of a task's steps (all of them, or STEP given by name or index), live from the
executor while the task runs (-f follows it) and from the object store once the manager fetched it.
Archived runs' logs are read as well.`,
		Example: `  runctl logs diamond build            # every step of build
  runctl logs diamond build compile -f # follow one step while it runs
  runctl logs diamond build 0 --object-store 's3://logs?endpoint=...'`,
		Args:              cobra.RangeArgs(2, 3),
		ValidArgsFunction: o.completeRunTaskStep,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.init(); err != nil {
				return err
			}
			return l.print(cmd.Context(), args)
		},
	}
	f := cmd.Flags()
	f.BoolVarP(&l.follow, "follow", "f", false, "Follow the log while the step runs.")
	f.StringVar(&l.storeURL, "object-store", l.storeURL, "Object store URL (as the manager's; default $"+objectstore.EnvURL+" or the local directory).")
	f.BoolVar(&l.insecureHTTP, "insecure-http", false, "Read from executors' http:// endpoints too (the executors' token then crosses the network in clear).")
	return cmd
}

type logs struct {
	*options
	follow       bool
	insecureHTTP bool
	storeURL     string
}

func (l *logs) print(ctx context.Context, args []string) error {
	runName, taskName := args[0], args[1]
	// An archived run's document keeps the status, with each step's log key.
	run, _, err := runops.Get(ctx, l.rs, l.ns, runName)
	if err != nil {
		return hint(err)
	}
	var ts *rsv1.TaskStatus
	for i := range run.Status.Tasks {
		if run.Status.Tasks[i].Name == taskName {
			ts = &run.Status.Tasks[i]
		}
	}
	if ts == nil {
		return fmt.Errorf("run %s has no task %q (its tasks: %s)", runName, taskName, taskNames(run))
	}
	if ts.ExecutorTask == "" {
		return fmt.Errorf("task %s is %s and was never scheduled: it has no log", taskName, ts.Phase)
	}
	steps := make([]int, 0, len(ts.Steps))
	for i := range ts.Steps {
		steps = append(steps, i)
	}
	if len(args) == 3 {
		i, err := stepIndex(ts, args[2])
		if err != nil {
			return err
		}
		steps = []int{i}
	}
	for _, i := range steps {
		if len(steps) > 1 {
			fmt.Fprintf(l.out, "==> step %d: %s <==\n", i, ts.Steps[i].Name)
		}
		if err := l.step(ctx, run, ts, i); err != nil {
			return err
		}
	}
	return nil
}

func stepIndex(ts *rsv1.TaskStatus, s string) (int, error) {
	if i, err := strconv.Atoi(s); err == nil && i >= 0 && i < len(ts.Steps) {
		return i, nil
	}
	for i, st := range ts.Steps {
		if st.Name == s {
			return i, nil
		}
	}
	names := make([]string, len(ts.Steps))
	for i, st := range ts.Steps {
		names[i] = fmt.Sprintf("%d %s", i, st.Name)
	}
	return 0, fmt.Errorf("task %s has no step %q (its steps: %s)", ts.Name, s, strings.Join(names, ", "))
}

// step prints one step's log: from the executor while it still has it, else from the object store.
func (l *logs) step(ctx context.Context, run *rsv1.Run, ts *rsv1.TaskStatus, i int) error {
	// The key the run's status records is where the log is, whatever layout the store had when it
	// was fetched (runs from before run uids keyed their logs by run name only).
	key := ts.Steps[i].LogKey
	noLog := fmt.Errorf("step %d of task %s has no log (it did not start, or its executor was lost before the log was fetched)", i, ts.Name)
	et, getErr := l.rs.RunserviceV1alpha1().ExecutorTasks(l.ns).Get(ctx, ts.ExecutorTask, metav1.GetOptions{})
	if getErr == nil && et.Annotations[rsv1.AnnotationFetched] == "" {
		if err := l.fromExecutor(ctx, et, i); !errors.Is(err, errGone) {
			return err
		}
	}
	if key == "" && getErr == nil && metav1.IsControlledBy(et, run) {
		key = objectstore.TaskOf(et).LogKey(i) // fetched, and the run's status not updated yet
	}
	if key == "" {
		return noLog
	}
	store, err := objectstore.Open(ctx, l.storeURL)
	if err != nil {
		return err
	}
	defer store.Close()
	rc, err := store.Get(ctx, key)
	if errors.Is(err, objectstore.ErrNotFound) {
		return noLog
	}
	if err != nil {
		return err
	}
	defer rc.Close()
	_, err = io.Copy(l.out, rc)
	return err
}

var errGone = errors.New("the executor no longer has the log")

func (l *logs) fromExecutor(ctx context.Context, et *rsv1.ExecutorTask, i int) error {
	ex, err := l.rs.RunserviceV1alpha1().Executors(l.ns).Get(ctx, et.Spec.Executor, metav1.GetOptions{})
	if err != nil || ex.Spec.Endpoint == "" {
		return errGone
	}
	var secret *corev1.Secret
	if secret, err = l.kube.CoreV1().Secrets(l.ns).Get(ctx, rsv1.ExecutorTokenSecret, metav1.GetOptions{}); err != nil {
		return fmt.Errorf("reading the executors' token: %w", err)
	}
	url := fmt.Sprintf("%s/v1/tasks/%s/steps/%d/log", ex.Spec.Endpoint, et.Name, i)
	if l.follow {
		url += "?follow=true"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+string(secret.Data[rsv1.ExecutorTokenKey]))
	// The executors of the namespace are trusted by their CA only (the Secret the first one made);
	// plain http only with --insecure-http, since the request carries the namespace's token.
	var bundle []byte
	if ca, err := l.kube.CoreV1().Secrets(l.ns).Get(ctx, rsv1.ExecutorCASecret, metav1.GetOptions{}); err == nil {
		bundle = pki.Bundle(ca.Data)
	} else if !apierrors.IsNotFound(err) {
		return fmt.Errorf("reading the executors' CA: %w", err)
	}
	trust := executorhttp.TrustPEM(bundle, l.insecureHTTP)
	// Dial and TLS timeouts always; without -f a bound on the whole request too. With -f the
	// executor sends headers only once the step has started writing, and a step may then stay quiet
	// for as long as it runs: no header or total bound.
	client := executorhttp.NewClient(executorhttp.Timeouts{}, false, nil, trust)
	if l.follow {
		client = executorhttp.NewClient(executorhttp.Timeouts{ResponseHeader: -1}, false, nil, trust)
	} else {
		client.Timeout = time.Minute
	}
	resp, err := client.Do(req)
	if errors.Is(err, executorhttp.ErrPlainHTTP) || errors.As(err, new(*tls.CertificateVerificationError)) {
		return fmt.Errorf("executor %s: %w", ex.Name, err) // not gone: not to be trusted
	}
	if err != nil {
		return errGone
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		if resp.StatusCode == http.StatusNotFound && et.Status.Phase.IsFinal() {
			return errGone
		}
		if resp.StatusCode == http.StatusNotFound {
			return fmt.Errorf("step %d has not written a log yet", i)
		}
		return fmt.Errorf("executor %s: %s", ex.Name, resp.Status)
	}
	_, err = io.Copy(l.out, resp.Body)
	return err
}
