package main

// Test controls and the session limit.
//
//	POST /pke-sim/task-seconds?method=CloneVM_Task&seconds=20[&prefix=NAME]
//
// makes tasks of that method take that long from now on (for targets whose
// name starts with prefix: for a clone the new VM's name, else the VM's own),
// so one test can slow its own cluster's clones without slowing the others.
//
//	POST /pke-sim/denied-privileges?privilege=ID[&privilege=ID...]
//
// makes the authorization manager answer these privileges as not granted (none
// given: all granted again), for the privilege check's tests.
//
//	GET /pke-sim/clone-calls
//
// counts the CloneVM_Task calls per destination name, refused ones included.
//
// With -session-limit N, a Login while N sessions exist is answered with HTTP
// 503, as vCenter answers when it is out of sessions.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/vmware/govmomi/simulator"
)

var loginCall = regexp.MustCompile(`<Login[\s>]`)

type control struct {
	next         http.Handler
	sessionLimit int
}

func newControl(next http.Handler, sessionLimit int) *control {
	return &control{next: next, sessionLimit: sessionLimit}
}

func knownMethod(method string) bool {
	for _, m := range simulator.TaskMethods() {
		if m == method {
			return true
		}
	}
	return false
}

// parseTaskSeconds reads "CloneVM_Task=20 PowerOnVM_Task=2" (spaces or commas).
func parseTaskSeconds(spec string) (map[string]float64, error) {
	out := map[string]float64{}
	for _, item := range strings.FieldsFunc(spec, func(r rune) bool { return r == ',' || r == ' ' }) {
		parts := strings.SplitN(item, "=", 2)
		if len(parts) != 2 || !knownMethod(parts[0]) {
			methods := simulator.TaskMethods()
			sort.Strings(methods)
			return nil, fmt.Errorf("task duration %q is not METHOD=SECONDS with METHOD one of %s", item, strings.Join(methods, ", "))
		}
		seconds, err := strconv.ParseFloat(parts[1], 64)
		if err != nil || seconds < 0 {
			return nil, fmt.Errorf("task duration %q: seconds must be a number >= 0", item)
		}
		out[parts[0]] = seconds
	}
	return out, nil
}

func (c *control) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/pke-sim/task-seconds" {
		c.setTaskSeconds(w, r)
		return
	}
	if r.URL.Path == "/pke-sim/clone-calls" {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(simulator.CloneCalls())
		return
	}
	if r.URL.Path == "/pke-sim/denied-privileges" && r.Method == http.MethodPost {
		simulator.DenyPrivileges(r.URL.Query()["privilege"])
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if c.sessionLimit > 0 && r.Method == http.MethodPost {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		if loginCall.Match(body) && simulator.SessionCount() >= c.sessionLimit {
			http.Error(w, "Out of HTTP sessions: Limited to "+strconv.Itoa(c.sessionLimit), http.StatusServiceUnavailable)
			return
		}
	}
	c.next.ServeHTTP(w, r)
}

func (c *control) setTaskSeconds(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "POST method, seconds and optionally prefix", http.StatusMethodNotAllowed)
		return
	}
	q := r.URL.Query()
	durations, err := parseTaskSeconds(q.Get("method") + "=" + q.Get("seconds"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	for method, seconds := range durations {
		simulator.SetTaskDuration(method, q.Get("prefix"), seconds)
	}
	w.WriteHeader(http.StatusNoContent)
}
