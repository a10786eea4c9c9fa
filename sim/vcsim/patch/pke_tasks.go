package simulator

// pke-vsphere's additions to govmomi's simulator, copied into the package at
// build time (see sim/vcenter.py and README "Simulator vs vCenter"). The Debian
// simulator runs every task inside the SOAP call that starts it; a real vCenter
// returns the task at once and finishes it seconds or minutes later. Here a task
// of a method given a duration is returned `running`, and its work (for a clone:
// registering the new VM) happens only when the duration has passed, unless the
// task was cancelled first.

import (
	"fmt"
	"math/rand"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// The vSphere name and descriptionId of the simulator's tasks that take time,
// by the simulator's own descriptionId.
var pkeTaskNames = map[string][2]string{
	"VirtualMachine.cloneVm":    {"CloneVM_Task", "VirtualMachine.clone"},
	"VirtualMachine.reconfigVm": {"ReconfigVM_Task", "VirtualMachine.reconfigure"},
	"VirtualMachine.powerOn":    {"PowerOnVM_Task", "VirtualMachine.powerOn"},
	"VirtualMachine.powerOff":   {"PowerOffVM_Task", "VirtualMachine.powerOff"},
	"VirtualMachine.destroy":    {"Destroy_Task", "VirtualMachine.destroy"},
}

// TaskMethods lists the methods whose tasks can be given a duration.
func TaskMethods() []string {
	names := make([]string, 0, len(pkeTaskNames))
	for _, n := range pkeTaskNames {
		names = append(names, n[0])
	}
	return names
}

type taskDuration struct {
	method  string
	prefix  string // target names starting with this ("" for all)
	seconds float64
}

// pkeTask is what the simulator's Task lacks: its vSphere method, the name of
// what it works on (for a clone, the new VM's name), a cancel switch.
type pkeTask struct {
	method   string
	target   string
	cancel   chan struct{}
	canceled bool
	done     func() // run once the task has finished, however it finished
	powerOn  bool   // a clone that powers its VM on as the task's last part
}

var (
	pkeMu        sync.Mutex
	pkeDurations []taskDuration // newest first
	pkeJitter    float64
	pkeTasks     = map[string]*pkeTask{}
	pkeRunning   = map[types.ManagedObjectReference]int{} // entities whose delayed task is executing
	pkeClones    = map[string]types.ManagedObjectReference{} // folder/name -> task of a clone in flight
	pkeRand      = rand.New(rand.NewSource(time.Now().UnixNano()))
)

// SetTaskDuration makes tasks of `method` on targets starting with `prefix` take
// `seconds` (0: finish inside the call, as the Debian simulator does). Later
// settings win over earlier ones.
func SetTaskDuration(method, prefix string, seconds float64) {
	pkeMu.Lock()
	defer pkeMu.Unlock()
	kept := []taskDuration{{method, prefix, seconds}}
	for _, d := range pkeDurations {
		if d.method != method || d.prefix != prefix {
			kept = append(kept, d)
		}
	}
	pkeDurations = kept
}

// SetTaskJitter varies every duration by up to ±fraction, uniformly.
func SetTaskJitter(fraction float64) {
	pkeMu.Lock()
	pkeJitter = fraction
	pkeMu.Unlock()
}

func (p *pkeTask) duration() time.Duration {
	pkeMu.Lock()
	defer pkeMu.Unlock()
	d := pkeSeconds(p.method, p.target)
	if p.powerOn {
		d += pkeSeconds("PowerOnVM_Task", p.target)
	}
	return time.Duration(d * (1 + pkeJitter*(2*pkeRand.Float64()-1)) * float64(time.Second))
}

// pkeSeconds is how long a task of method on target takes (pkeMu held).
func pkeSeconds(method, target string) float64 {
	for _, d := range pkeDurations {
		if d.method == method && strings.HasPrefix(target, d.prefix) {
			return d.seconds
		}
	}
	return 0
}

func pkeEntityName(ref types.ManagedObjectReference) string {
	if e, ok := Map.Get(ref).(mo.Entity); ok {
		return e.Entity().Name
	}
	return ref.Value
}

// pkeTaskOf names the task as vSphere does and remembers what it works on.
func pkeTaskOf(t *Task) *pkeTask {
	pkeMu.Lock()
	defer pkeMu.Unlock()
	if p, ok := pkeTasks[t.Self.Value]; ok {
		return p
	}
	p := &pkeTask{cancel: make(chan struct{})}
	if names, ok := pkeTaskNames[t.Info.DescriptionId]; ok {
		p.method = names[0]
		t.Info.Name, t.Info.DescriptionId = names[0], names[1]
	}
	if t.Info.Entity != nil {
		t.Info.EntityName = pkeEntityName(*t.Info.Entity)
		p.target = t.Info.EntityName
	}
	pkeTasks[t.Self.Value] = p
	return p
}

// Run starts the task: inline when it has no duration (or it is a step of
// another task on the same entity), else in the background.
func (t *Task) Run() types.ManagedObjectReference {
	p := pkeTaskOf(t)
	entity := *t.Info.Entity
	pkeMu.Lock()
	nested := pkeRunning[entity] > 0
	pkeMu.Unlock()
	d := p.duration()
	if d <= 0 || nested {
		ref := t.runInline()
		p.finish()
		return ref
	}
	Map.Update(t, []types.PropertyChange{
		{Name: "info.startTime", Val: time.Now()},
		{Name: "info.state", Val: types.TaskInfoStateRunning},
		{Name: "info.cancelable", Val: true},
	})
	go func() {
		select {
		case <-time.After(d):
		case <-p.cancel:
		}
		Map.WithLock(entity, func() {
			var res types.AnyType
			var err types.BaseMethodFault
			if p.isCanceled() {
				err = new(types.RequestCanceled)
			} else {
				pkeMu.Lock()
				pkeRunning[entity]++
				pkeMu.Unlock()
				res, err = t.Execute(t)
				pkeMu.Lock()
				pkeRunning[entity]--
				pkeMu.Unlock()
			}
			t.complete(res, err)
		})
		p.finish()
	}()
	return t.Self
}

func (t *Task) complete(res types.AnyType, err types.BaseMethodFault) {
	state := types.TaskInfoStateSuccess
	var fault interface{}
	if err != nil {
		state = types.TaskInfoStateError
		fault = types.LocalizedMethodFault{Fault: err, LocalizedMessage: faultName(err)}
	}
	Map.Update(t, []types.PropertyChange{
		{Name: "info.completeTime", Val: time.Now()},
		{Name: "info.cancelable", Val: false},
		{Name: "info.state", Val: state},
		{Name: "info.result", Val: res},
		{Name: "info.error", Val: fault},
	})
}

func faultName(err types.BaseMethodFault) string {
	return strings.TrimPrefix(fmt.Sprintf("%T", err), "*types.")
}

func (p *pkeTask) isCanceled() bool {
	pkeMu.Lock()
	defer pkeMu.Unlock()
	return p.canceled
}

func (p *pkeTask) finish() {
	pkeMu.Lock()
	done := p.done
	p.done = nil
	pkeMu.Unlock()
	if done != nil {
		done()
	}
}

// CancelTask cancels a task that has not finished, as vCenter does for a clone
// in progress: it ends in error with RequestCanceled and leaves nothing behind.
func (t *Task) CancelTask(ctx *Context, req *types.CancelTask) soap.HasFault {
	body := new(methods.CancelTaskBody)
	p := pkeTaskOf(t)
	switch t.Info.State {
	case types.TaskInfoStateSuccess, types.TaskInfoStateError:
		body.Fault_ = Fault("the task has already finished", &types.InvalidState{})
		return body
	}
	if !t.Info.Cancelable {
		body.Fault_ = Fault("the task cannot be cancelled", &types.NotSupported{})
		return body
	}
	pkeMu.Lock()
	if !p.canceled {
		p.canceled = true
		close(p.cancel)
	}
	pkeMu.Unlock()
	Map.Update(t, []types.PropertyChange{{Name: "info.cancelled", Val: true}})
	body.Res = new(types.CancelTaskResponse)
	return body
}

// pkeCloneStarts names a clone's task after the VM it makes and reserves that
// name in the folder until the task ends. A name the folder already holds, or
// that another clone in flight will take, is refused with DuplicateName, as
// vCenter does (the Debian simulator makes a second VM of the same name).
func pkeCloneStarts(task *Task, folder *mo.Folder, name string) types.BaseMethodFault {
	p := pkeTaskOf(task)
	p.target = name
	pkeMu.Lock()
	pkeCloneCalls[name]++
	pkeMu.Unlock()
	key := folder.Self.Value + "/" + name
	refuse := func(other types.ManagedObjectReference) types.BaseMethodFault {
		p.method = "" // refused at once, as vCenter does
		return &types.DuplicateName{Name: name, Object: other}
	}
	for _, child := range folder.ChildEntity {
		if pkeEntityName(child) == name {
			return refuse(child)
		}
	}
	pkeMu.Lock()
	defer pkeMu.Unlock()
	if other, ok := pkeClones[key]; ok {
		return refuse(other)
	}
	pkeClones[key] = task.Self
	p.done = func() {
		pkeMu.Lock()
		delete(pkeClones, key)
		pkeMu.Unlock()
	}
	return nil
}

var pkeCloneCalls = map[string]int{}

// CloneCalls counts every CloneVM_Task call per destination name, refused ones
// included (a test's strictest "cloned once").
func CloneCalls() map[string]int {
	pkeMu.Lock()
	defer pkeMu.Unlock()
	calls := make(map[string]int, len(pkeCloneCalls))
	for name, n := range pkeCloneCalls {
		calls[name] = n
	}
	return calls
}

// pkeCloneHardware applies the clone spec's CPUs, cores per socket and memory
// (the Debian simulator keeps the template's) and refuses a topology vCenter
// refuses.
func pkeCloneHardware(config *types.VirtualMachineConfigSpec, spec *types.VirtualMachineConfigSpec) types.BaseMethodFault {
	if spec != nil {
		if spec.NumCPUs != 0 {
			config.NumCPUs = spec.NumCPUs
		}
		if spec.NumCoresPerSocket != 0 {
			config.NumCoresPerSocket = spec.NumCoresPerSocket
		}
		if spec.MemoryMB != 0 {
			config.MemoryMB = spec.MemoryMB
		}
	}
	return checkCPUTopology(config.NumCPUs, config.NumCoresPerSocket)
}

// pkeCheckReconfigure refuses a reconfigure whose CPUs are not a multiple of
// the cores per socket it would leave.
func pkeCheckReconfigure(vm *VirtualMachine, spec *types.VirtualMachineConfigSpec) types.BaseMethodFault {
	cpus, cores := vm.Config.Hardware.NumCPU, vm.Config.Hardware.NumCoresPerSocket
	if spec.NumCPUs != 0 {
		cpus = spec.NumCPUs
	}
	if spec.NumCoresPerSocket != 0 {
		cores = spec.NumCoresPerSocket
	}
	return checkCPUTopology(cpus, cores)
}

func checkCPUTopology(cpus, cores int32) types.BaseMethodFault {
	if cores > 1 && cpus%cores != 0 {
		return &types.InvalidArgument{InvalidProperty: "numCoresPerSocket"}
	}
	return nil
}

// pkeRankDatastores orders a datastore cluster's members as Storage DRS would
// for a new VM: the least used first, counting the VMs on each and the clones
// in flight to it, so that parallel clones spread.
func pkeRankDatastores(members []types.ManagedObjectReference) []types.ManagedObjectReference {
	load := map[types.ManagedObjectReference]int{}
	for _, ref := range members {
		if ds, ok := Map.Get(ref).(*Datastore); ok {
			load[ref] = len(ds.Vm)
		}
	}
	pkeMu.Lock()
	for ref, n := range pkeDatastoreClaims {
		if _, ok := load[ref]; ok {
			load[ref] += n
		}
	}
	pkeMu.Unlock()
	ranked := append([]types.ManagedObjectReference(nil), members...)
	for i := 1; i < len(ranked); i++ {
		for j := i; j > 0 && load[ranked[j]] < load[ranked[j-1]]; j-- {
			ranked[j], ranked[j-1] = ranked[j-1], ranked[j]
		}
	}
	return ranked
}

var pkeDatastoreClaims = map[types.ManagedObjectReference]int{}

// pkeCloneClaims counts a clone in flight against its datastore until it ends.
func pkeCloneClaims(task *Task, ds *types.ManagedObjectReference) {
	if ds == nil {
		return
	}
	p := pkeTaskOf(task)
	ref := *ds
	pkeMu.Lock()
	pkeDatastoreClaims[ref]++
	previous := p.done
	p.done = func() {
		pkeMu.Lock()
		pkeDatastoreClaims[ref]--
		pkeMu.Unlock()
		if previous != nil {
			previous()
		}
	}
	pkeMu.Unlock()
}

// SessionCount is how many sessions are logged in (for the session limit).
func SessionCount() int {
	return len(Map.SessionManager().sessions)
}

var pkeDenied = map[string]bool{}

// DenyPrivileges makes HasPrivilegeOnEntities answer "not granted" for these
// privileges, for every user and entity (the simulator grants everything): how
// the tests show preflight naming a missing privilege. The simulator still
// carries out the calls that need them.
func DenyPrivileges(ids []string) {
	pkeMu.Lock()
	defer pkeMu.Unlock()
	pkeDenied = map[string]bool{}
	for _, id := range ids {
		pkeDenied[id] = true
	}
}

func pkePrivilegeDenied(id string) bool {
	pkeMu.Lock()
	defer pkeMu.Unlock()
	return pkeDenied[id]
}

// pkeGuestNic keeps guest.net as VMware Tools reports it: one entry per NIC,
// named after the network the NIC is connected to (distributed port groups
// too; the Debian simulator left those unnamed), and following an edit of the
// NIC's backing (it kept the name from when the NIC was added).
func pkeGuestNic(vm *VirtualMachine, c *types.VirtualEthernetCard, name string, net types.ManagedObjectReference) {
	if name == "" && net.Type == "DistributedVirtualPortgroup" {
		if pg, ok := Map.Get(net).(*DistributedVirtualPortgroup); ok {
			name = pg.Name
		}
	}
	for i := range vm.Guest.Net {
		if vm.Guest.Net[i].DeviceConfigId == c.Key {
			vm.Guest.Net[i].Network = name
			vm.Guest.Net[i].MacAddress = c.MacAddress
			return
		}
	}
	vm.Guest.Net = append(vm.Guest.Net, types.GuestNicInfo{
		Network:        name,
		MacAddress:     c.MacAddress,
		Connected:      true,
		DeviceConfigId: c.Key,
	})
}

// pkeNicAddress handles extraConfig "SET.guest.nic.<MAC>.ipAddress" = address:
// the address VMware Tools reports for the NIC with that MAC. Tools lists the
// interfaces in the guest's own order, which need not be the VM's device order:
// here, the order in which their addresses were reported. The first address
// reported is also guest.ipAddress, as Tools' "primary" one.
func pkeNicAddress(vm *VirtualMachine, val *types.OptionValue) ([]types.PropertyChange, bool) {
	const prefix, suffix = "SET.guest.nic.", ".ipAddress"
	if !strings.HasPrefix(val.Key, prefix) || !strings.HasSuffix(val.Key, suffix) {
		return nil, false
	}
	mac := strings.ToLower(strings.TrimSuffix(strings.TrimPrefix(val.Key, prefix), suffix))
	ip, _ := val.Value.(string)
	var changes []types.PropertyChange
	for i, nic := range vm.Guest.Net {
		if strings.ToLower(nic.MacAddress) != mac {
			continue
		}
		nic.IpAddress = []string{ip}
		rest := append(append([]types.GuestNicInfo{}, vm.Guest.Net[:i]...), vm.Guest.Net[i+1:]...)
		vm.Guest.Net = append(rest, nic)
		changes = append(changes, types.PropertyChange{Name: "guest.net", Val: vm.Guest.Net})
		if vm.Guest.IpAddress == "" {
			vm.Guest.IpAddress = ip // seen by the next address of the same reconfigure
			changes = append(changes,
				types.PropertyChange{Name: "guest.ipAddress", Val: ip},
				types.PropertyChange{Name: "summary.guest.ipAddress", Val: ip},
			)
		}
		break
	}
	return changes, true
}

// pkeClonePowersOn marks a clone whose spec asks for the VM to be powered on
// (CloneSpec.powerOn): its task then lasts a clone and a power-on.
func pkeClonePowersOn(task *Task, on bool) {
	p := pkeTaskOf(task)
	pkeMu.Lock()
	p.powerOn = on
	pkeMu.Unlock()
}

// pkeClonePowerOn powers a new clone on as the last part of its clone task, as
// vCenter does when CloneSpec.powerOn is set; Debian's simulator ignored it and
// left the clone off.
func pkeClonePowerOn(ctx *Context, clone *VirtualMachine) {
	runner := &powerVMTask{clone, types.VirtualMachinePowerStatePoweredOn, ctx}
	_, _ = runner.Run(nil)
}
