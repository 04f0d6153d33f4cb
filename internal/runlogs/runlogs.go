// Package runlogs reads a task's step logs as a user does, with the user's own credentials: live
// from the executor while it still has them, from the object store once the manager fetched them,
// also for archived runs. runctl logs and its web view both read through it.
package runlogs

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

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/executorhttp"
	"runservice.dev/runservice/internal/objectstore"
	"runservice.dev/runservice/internal/pki"
	"runservice.dev/runservice/internal/runops"
	"runservice.dev/runservice/pkg/client/clientset/versioned"
)

// Reader reads the logs of one namespace's runs.
type Reader struct {
	Runs      versioned.Interface
	Kube      kubernetes.Interface
	Namespace string
	// StoreURL is the object store the manager fetches logs into.
	StoreURL string
	// InsecureHTTP lets the reader ask executors' http:// endpoints too (the namespace's executor
	// token then crosses the network in clear).
	InsecureHTTP bool
}

// Run returns the live run named, or else the archived one (archived true) as a Run: its document
// keeps the status, with each step's log key.
func (r *Reader) Run(ctx context.Context, name string) (run *rsv1.Run, archived bool, err error) {
	return runops.Get(ctx, r.Runs, r.Namespace, name)
}

// Task returns the status of the run's task named.
func Task(run *rsv1.Run, name string) (*rsv1.TaskStatus, error) {
	for i := range run.Status.Tasks {
		if run.Status.Tasks[i].Name == name {
			return &run.Status.Tasks[i], nil
		}
	}
	return nil, fmt.Errorf("run %s has no task %q (its tasks: %s)", run.Name, name, runops.TaskNames(run))
}

// Task is Task with, while the run's status has not recorded the task's steps yet, the steps its
// executor reports: a run records a task's start and steps with its next status write (up to the
// run controller's StartDelay after the start), the executor at once. A step can be followed as
// soon as its ExecutorTask says it runs.
func (r *Reader) Task(ctx context.Context, run *rsv1.Run, name string) (*rsv1.TaskStatus, error) {
	ts, err := Task(run, name)
	if err != nil || len(ts.Steps) > 0 || ts.ExecutorTask == "" || ts.Phase.IsFinal() {
		return ts, err
	}
	et, err := r.Runs.RunserviceV1alpha1().ExecutorTasks(r.Namespace).Get(ctx, ts.ExecutorTask, metav1.GetOptions{})
	if err != nil || len(et.Status.Steps) == 0 {
		return ts, nil // nothing more to say than the run does: its error names the steps it knows
	}
	live := ts.DeepCopy()
	live.Steps = et.Status.Steps
	return live, nil
}

// StepIndex finds a task's step by index or name.
func StepIndex(ts *rsv1.TaskStatus, s string) (int, error) {
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

// Print writes the logs of a run's task to w: every step's, each under a header, or only step
// (a name or an index) when it is not empty. follow streams a running step's log to its end.
func (r *Reader) Print(ctx context.Context, w io.Writer, runName, taskName, step string, follow bool) error {
	run, _, err := r.Run(ctx, runName)
	if err != nil {
		return err
	}
	ts, err := r.Task(ctx, run, taskName)
	if err != nil {
		return err
	}
	if ts.ExecutorTask == "" {
		return fmt.Errorf("task %s is %s and was never scheduled: it has no log", taskName, ts.Phase)
	}
	steps := make([]int, 0, len(ts.Steps))
	for i := range ts.Steps {
		steps = append(steps, i)
	}
	if step != "" {
		i, err := StepIndex(ts, step)
		if err != nil {
			return err
		}
		steps = []int{i}
	}
	for _, i := range steps {
		if len(steps) > 1 {
			fmt.Fprintf(w, "==> step %d: %s <==\n", i, ts.Steps[i].Name)
		}
		if err := r.Step(ctx, w, run, ts, i, follow); err != nil {
			return err
		}
	}
	return nil
}

// ErrNoLog is returned by Step for a step that has no log to read.
var ErrNoLog = errors.New("no log")

// Step writes one step's log to w: from the executor while it still has it, else from the object
// store.
func (r *Reader) Step(ctx context.Context, w io.Writer, run *rsv1.Run, ts *rsv1.TaskStatus, i int, follow bool) error {
	if i < 0 || i >= len(ts.Steps) {
		return fmt.Errorf("task %s has no step %d", ts.Name, i)
	}
	// The key the run's status records is where the log is, whatever layout the store had when it
	// was fetched (runs from before run uids keyed their logs by run name only).
	key := ts.Steps[i].LogKey
	noLog := fmt.Errorf("step %d of task %s has %w (it did not start, or its executor was lost before the log was fetched)", i, ts.Name, ErrNoLog)
	var et *rsv1.ExecutorTask
	getErr := errors.New("never scheduled")
	if ts.ExecutorTask != "" {
		et, getErr = r.Runs.RunserviceV1alpha1().ExecutorTasks(r.Namespace).Get(ctx, ts.ExecutorTask, metav1.GetOptions{})
	}
	// The executor keeps its copy until the run's status records the fetch (and it is told so).
	if getErr == nil && run.Status.Fetched(et) == "" {
		if err := r.fromExecutor(ctx, w, et, i, follow); !errors.Is(err, errGone) {
			return err
		}
	}
	if key == "" && getErr == nil && metav1.IsControlledBy(et, run) {
		key = objectstore.TaskOf(et).LogKey(i) // fetched, and the run's status not updated yet
	}
	if key == "" {
		return noLog
	}
	store, err := objectstore.Open(ctx, r.StoreURL)
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
	_, err = io.Copy(w, rc)
	return err
}

var errGone = errors.New("the executor no longer has the log")

func (r *Reader) fromExecutor(ctx context.Context, w io.Writer, et *rsv1.ExecutorTask, i int, follow bool) error {
	ex, err := r.Runs.RunserviceV1alpha1().Executors(r.Namespace).Get(ctx, et.Spec.Executor, metav1.GetOptions{})
	if err != nil || ex.Spec.Endpoint == "" {
		return errGone
	}
	var secret *corev1.Secret
	if secret, err = r.Kube.CoreV1().Secrets(r.Namespace).Get(ctx, rsv1.ExecutorTokenSecret, metav1.GetOptions{}); err != nil {
		return fmt.Errorf("reading the executors' token: %w", err)
	}
	url := fmt.Sprintf("%s/v1/tasks/%s/steps/%d/log", ex.Spec.Endpoint, et.Name, i)
	if follow {
		url += "?follow=true"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+string(secret.Data[rsv1.ExecutorTokenKey]))
	// The executors of the namespace are trusted by their CA only (the Secret the first one made);
	// plain http only with InsecureHTTP, since the request carries the namespace's token.
	var bundle []byte
	if ca, err := r.Kube.CoreV1().Secrets(r.Namespace).Get(ctx, rsv1.ExecutorCASecret, metav1.GetOptions{}); err == nil {
		bundle = pki.Bundle(ca.Data)
	} else if !apierrors.IsNotFound(err) {
		return fmt.Errorf("reading the executors' CA: %w", err)
	}
	trust := executorhttp.TrustPEM(bundle, r.InsecureHTTP)
	// Dial and TLS timeouts always; without follow a bound on the whole request too. Following,
	// the executor sends headers only once the step has started writing, and a step may then stay
	// quiet for as long as it runs: no header or total bound.
	client := executorhttp.NewClient(executorhttp.Timeouts{}, false, nil, trust)
	if follow {
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
	_, err = io.Copy(w, resp.Body)
	return err
}
