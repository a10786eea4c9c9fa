// Command vcsim serves govmomi's vCenter simulator with the inventory that
// pke-vsphere's demo and tests use.
//
// It is built offline from Debian's golang-github-vmware-govmomi-dev source
// (GOPATH mode); see sim/vcenter.py for the build and the README's "Simulator vs vCenter" for the
// ways this simulator differs from a real vCenter. The simulator package itself
// is patched (sim/vcsim/patch) so that tasks take time, names collide and
// clone specs are honoured, as on vCenter.
//
// On start-up it prints one JSON line to stdout, {"url": "..."}, once the
// server is listening, and serves until SIGTERM or SIGINT.
package main

import (
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vmware/govmomi/simulator"
)

func parseDelays(spec string) (map[string]int, error) {
	delays := map[string]int{}
	if spec == "" {
		return delays, nil
	}
	for _, item := range strings.Split(spec, ",") {
		parts := strings.SplitN(item, "=", 2)
		if len(parts) != 2 {
			return nil, fmt.Errorf("method delay %q is not METHOD=MILLISECONDS", item)
		}
		ms, err := strconv.Atoi(parts[1])
		if err != nil {
			return nil, fmt.Errorf("method delay %q: %v", item, err)
		}
		delays[parts[0]] = ms
	}
	return delays, nil
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on (port 0 picks a free port)")
	username := flag.String("username", "", "user name that may log in (empty: any)")
	password := flag.String("password", "", "password that may log in")
	certFile := flag.String("tls-cert", "", "PEM certificate to serve HTTPS with (empty: plain HTTP)")
	keyFile := flag.String("tls-key", "", "PEM private key for -tls-cert")
	methodDelay := flag.String("method-delay", "", "per-method response delays, e.g. CloneVM_Task=2000,PowerOnVM_Task=500")
	taskSeconds := flag.String("task-seconds", "", "how long tasks run, e.g. 'CloneVM_Task=20 PowerOnVM_Task=2' (commas or spaces)")
	taskJitter := flag.Float64("task-jitter", 0.2, "vary each task's duration by up to this fraction, either way")
	sessionLimit := flag.Int("session-limit", 0, "refuse logins beyond this many sessions with HTTP 503, as vCenter does (0: no limit)")
	idle := flag.Duration("session-idle-timeout", 0, "expire sessions idle for this long (0: never)")
	hosts := flag.Int("hosts", 3, "hosts in the cluster")
	datastores := flag.Int("datastores", 3, "datastores")
	flag.Parse()

	delays, err := parseDelays(*methodDelay)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}

	simulator.SessionIdleTimeout = *idle
	durations, err := parseTaskSeconds(*taskSeconds)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}

	model := simulator.VPX()
	model.Datacenter = 1
	model.Cluster = 1
	model.ClusterHost = *hosts
	model.Host = 0
	model.Datastore = *datastores
	model.Pod = 1
	model.Portgroup = 2
	model.Pool = 1
	model.Machine = 2
	model.DelayConfig.MethodDelay = delays

	if err := model.Create(); err != nil {
		fmt.Fprintln(os.Stderr, "create model:", err)
		os.Exit(1)
	}
	defer model.Remove()
	// Only now: the model's own set-up (powering VMs on) runs inline.
	for method, seconds := range durations {
		simulator.SetTaskDuration(method, "", seconds)
	}
	simulator.SetTaskJitter(*taskJitter)

	model.Service.Listen = &url.URL{Host: *listen}
	if *username != "" {
		model.Service.Listen.User = url.UserPassword(*username, *password)
	}
	if *certFile != "" {
		cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "load TLS key pair:", err)
			os.Exit(1)
		}
		model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	}

	server := model.Service.NewServer()
	defer server.Close()
	// Read per request by net/http, so wrapping it here, before any client, is safe.
	server.Config.Handler = newControl(newCloneFaults(server.Config.Handler), *sessionLimit)

	u := *server.URL
	u.User = nil
	line, _ := json.Marshal(map[string]string{"url": u.String(), "started": time.Now().UTC().Format(time.RFC3339)})
	fmt.Println(string(line))

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
}
