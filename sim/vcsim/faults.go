package main

// Clone-task faults for the tests: a real vCenter fails a clone task when its
// datastore is full or a host stops answering; the simulator has no way to. A
// test arms a fault for one VM name with
//
//	POST /pke-sim/clone-faults?name=NAME&fault=NoDiskSpace|HostCommunication
//
// and every later CloneVM_Task to that name gets a task that fails with it (the
// task is a real simulator task: its info.state and info.error are what the
// client reads). GET /pke-sim/clone-faults returns how many were injected per
// name. Everything else passes through to the simulator untouched.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"html"
	"io"
	"net/http"
	"regexp"
	"sync"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

var (
	cloneCall = regexp.MustCompile(`<CloneVM_Task[\s>]`)
	cloneThis = regexp.MustCompile(`<_this[^>]*>([^<]+)</_this>`)
	cloneName = regexp.MustCompile(`<name[^>]*>([^<]*)</name>`)
)

type cloneFaults struct {
	mu       sync.Mutex
	armed    map[string]string
	injected map[string]int
	next     http.Handler
}

func newCloneFaults(next http.Handler) *cloneFaults {
	return &cloneFaults{armed: map[string]string{}, injected: map[string]int{}, next: next}
}

func faultFor(kind, name string) (types.BaseMethodFault, error) {
	switch kind {
	case "NoDiskSpace":
		return &types.NoDiskSpace{FileFault: types.FileFault{File: name}, Datastore: "LocalDS_0"}, nil
	case "HostCommunication":
		return &types.HostCommunication{}, nil
	}
	return nil, fmt.Errorf("unknown fault %q (NoDiskSpace or HostCommunication)", kind)
}

func (c *cloneFaults) control(w http.ResponseWriter, r *http.Request) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if r.Method == http.MethodPost {
		name, kind := r.URL.Query().Get("name"), r.URL.Query().Get("fault")
		if _, err := faultFor(kind, name); err != nil || name == "" {
			http.Error(w, fmt.Sprintf("need name and a known fault: %v", err), http.StatusBadRequest)
			return
		}
		c.armed[name] = kind
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"armed": c.armed, "injected": c.injected})
}

func (c *cloneFaults) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/pke-sim/clone-faults" {
		c.control(w, r)
		return
	}
	if r.Method != http.MethodPost {
		c.next.ServeHTTP(w, r)
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	if cloneCall.Match(body) {
		if this, name := cloneThis.FindSubmatch(body), cloneName.FindSubmatch(body); this != nil && name != nil {
			if c.fail(w, string(this[1]), html.UnescapeString(string(name[1]))) {
				return
			}
		}
	}
	c.next.ServeHTTP(w, r)
}

// fail answers the clone with a failing task if a fault is armed for the name.
func (c *cloneFaults) fail(w http.ResponseWriter, vm, name string) bool {
	c.mu.Lock()
	kind, ok := c.armed[name]
	if ok {
		c.injected[name]++
	}
	c.mu.Unlock()
	if !ok {
		return false
	}
	source := simulator.Map.Get(types.ManagedObjectReference{Type: "VirtualMachine", Value: vm})
	if source == nil {
		return false
	}
	fault, _ := faultFor(kind, name)
	task := simulator.CreateTask(source, "cloneVm", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		return nil, fault
	})
	ref := task.Run()
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?>`+
		`<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" `+
		`xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">`+
		`<soapenv:Body><CloneVM_TaskResponse xmlns="urn:vim25">`+
		`<returnval type="Task">%s</returnval></CloneVM_TaskResponse></soapenv:Body></soapenv:Envelope>`, ref.Value)
	return true
}
