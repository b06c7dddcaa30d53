// Package kubelet is the project's simulated kubelet: it keeps one Node per EC2 instance of its cluster (and
// adopts any other Node, such as one a test creates), renews their Leases, reports Ready after a delay, turns
// Pods bound to its Nodes Running and Ready after a delay, completes Job pods, and finalizes deleted Pods. Like
// kwok, it is a short list of stages over object state; it runs no containers.
package kubelet

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log"
	"strconv"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/phoenix/testenv/internal/ec2"
)

// ReadyAnnotation on a Node set to "false" makes the kubelet report it NotReady (the harness's switch for
// tests); any other value or none means the node follows its instance.
const ReadyAnnotation = "testenv.phoenix.dev/ready"

// Pod annotations (set them in a workload's pod template) that change what the simulated containers do:
//   - ReadyDelayAnnotation: a Go duration instead of the kubelet's --ready-delay;
//   - ReadyAnnotation "never": the containers run but never pass readiness;
//   - ExitCodeAnnotation: the containers exit with this code (the pod fails, or crash-loops under restartPolicy
//     Always).
//
// The controllers react to the resulting status as they would on a real node (progress deadlines, Job backoff).
const (
	PodReadyDelayAnnotation = "testenv.phoenix.dev/ready-delay"
	PodReadyAnnotation      = "testenv.phoenix.dev/ready"
	PodExitCodeAnnotation   = "testenv.phoenix.dev/exit-code"
)

// InstanceLabel names the EC2 instance a Node stands for.
const InstanceLabel = "node.kubernetes.io/instance-id"

// Config is one cluster's kubelet.
type Config struct {
	Cluster          string
	EC2              *ec2.Client // nil: no EC2-driven nodes
	StaticNodes      []string
	Version          string
	NodeDelay        time.Duration
	ReadyDelay       time.Duration
	Poll             time.Duration
	DeleteTerminated bool
}

type nodeState struct {
	firstSeen  time.Time
	running    bool
	instanceID string
	ip         string
	podIPs     int
	lastLease  time.Time
}

// Kubelet is the running simulation.
type Kubelet struct {
	cfg    Config
	client kubernetes.Interface

	mu    sync.Mutex
	nodes map[string]*nodeState
	queue workqueue.TypedDelayingInterface[string]
	pods  cache.Indexer
	// boundAt is when this kubelet first saw each pod bound to one of its nodes (API timestamps have only
	// second precision, too coarse for the delays tests ask for).
	boundAt map[types.UID]time.Time
}

// New builds a kubelet over client.
func New(cfg Config, client kubernetes.Interface) *Kubelet {
	if cfg.Poll <= 0 {
		cfg.Poll = 500 * time.Millisecond
	}
	return &Kubelet{cfg: cfg, client: client, nodes: map[string]*nodeState{}, boundAt: map[types.UID]time.Time{}, queue: workqueue.NewTypedDelayingQueue[string]()}
}

// Run keeps nodes and pods until ctx ends.
func (k *Kubelet) Run(ctx context.Context) error {
	factory := informers.NewSharedInformerFactory(k.client, 0)
	podInformer := factory.Core().V1().Pods().Informer()
	enqueue := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			k.queue.Add(key)
		}
	}
	if _, err := podInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
		DeleteFunc: func(obj any) {
			if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = tomb.Obj
			}
			if pod, ok := obj.(*corev1.Pod); ok {
				k.mu.Lock()
				delete(k.boundAt, pod.UID)
				k.mu.Unlock()
			}
		},
	}); err != nil {
		return fmt.Errorf("watching pods: %w", err)
	}
	k.pods = podInformer.GetIndexer()
	factory.Start(ctx.Done())
	go func() {
		<-ctx.Done()
		k.queue.ShutDown()
	}()
	go k.podWorker(ctx)

	ticker := time.NewTicker(k.cfg.Poll)
	defer ticker.Stop()
	for {
		if err := k.syncNodes(ctx); err != nil && ctx.Err() == nil {
			log.Printf("kubelet %s: %v", k.cfg.Cluster, err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
	}
}

type desiredNode struct {
	name     string
	running  bool
	instance *ec2.Instance
}

func (k *Kubelet) desired(ctx context.Context) (map[string]desiredNode, bool, error) {
	out := map[string]desiredNode{}
	for _, n := range k.cfg.StaticNodes {
		out[n] = desiredNode{name: n, running: true}
	}
	if k.cfg.EC2 == nil {
		return out, false, nil
	}
	instances, err := k.cfg.EC2.Describe(ctx)
	if err != nil {
		return nil, false, err
	}
	for i := range instances {
		inst := instances[i]
		if inst.Tags[ec2.EnvTag] != k.cfg.Cluster {
			continue
		}
		switch inst.State {
		case "running":
			out[inst.NodeName()] = desiredNode{name: inst.NodeName(), running: true, instance: &inst}
		case "pending", "stopping", "stopped":
			out[inst.NodeName()] = desiredNode{name: inst.NodeName(), running: false, instance: &inst}
		}
	}
	return out, true, nil
}

func (k *Kubelet) syncNodes(ctx context.Context) error {
	want, fromEC2, err := k.desired(ctx)
	if err != nil {
		return err
	}
	live, err := k.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("listing nodes: %w", err)
	}
	now := time.Now()
	liveByName := map[string]*corev1.Node{}
	for i := range live.Items {
		n := &live.Items[i]
		liveByName[n.Name] = n
		if _, ok := want[n.Name]; ok {
			continue
		}
		if n.Labels[InstanceLabel] != "" && fromEC2 {
			// An instance-backed node whose instance terminated or vanished.
			if k.cfg.DeleteTerminated {
				if err := k.client.CoreV1().Nodes().Delete(ctx, n.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
					return fmt.Errorf("deleting node %s: %w", n.Name, err)
				}
				k.mu.Lock()
				delete(k.nodes, n.Name)
				k.mu.Unlock()
				continue
			}
			want[n.Name] = desiredNode{name: n.Name, running: false}
			continue
		}
		// Adopt a node someone else created (a test, kubectl).
		want[n.Name] = desiredNode{name: n.Name, running: true}
	}
	for name, d := range want {
		k.mu.Lock()
		st, ok := k.nodes[name]
		if !ok {
			st = &nodeState{firstSeen: now, podIPs: 1}
			k.nodes[name] = st
		}
		if d.running && !st.running {
			st.firstSeen = now
		}
		st.running = d.running
		if d.instance != nil {
			st.instanceID = d.instance.ID
			st.ip = d.instance.PrivateIP
		}
		if st.ip == "" {
			st.ip = syntheticIP(name)
		}
		ready := d.running && now.Sub(st.firstSeen) >= k.cfg.NodeDelay
		renew := now.Sub(st.lastLease) >= 10*time.Second && d.running
		k.mu.Unlock()

		node := liveByName[name]
		if node == nil {
			var extra map[string]string
			if d.instance != nil && k.cfg.EC2 != nil {
				userData, err := k.cfg.EC2.UserData(ctx, d.instance.ID)
				if err != nil {
					return err
				}
				if extra, err = k3sNodeLabels(userData); err != nil {
					// A real k3s node would not start with this configuration: it never registers.
					log.Printf("kubelet %s: instance %s does not join: %v", k.cfg.Cluster, d.instance.ID, err)
					continue
				}
			}
			node, err = k.client.CoreV1().Nodes().Create(ctx, k.newNode(d, extra), metav1.CreateOptions{})
			if err != nil {
				if apierrors.IsAlreadyExists(err) {
					continue
				}
				return fmt.Errorf("registering node %s: %w", name, err)
			}
		}
		if node.Annotations[ReadyAnnotation] == "false" {
			ready = false
		}
		if err := k.updateNodeStatus(ctx, node, ready, st.ip); err != nil {
			return err
		}
		if renew {
			if err := k.renewLease(ctx, node); err != nil {
				return err
			}
			k.mu.Lock()
			st.lastLease = now
			k.mu.Unlock()
		}
	}
	return nil
}

// syntheticIP gives a node without an instance a stable address from TEST-NET-2 (never dialed).
func syntheticIP(name string) string {
	h := sha256.Sum256([]byte(name))
	return fmt.Sprintf("198.51.100.%d", 1+int(h[0])%250)
}

// newNode is the Node a kubelet registers: the labels of its k3s configuration (extra), then the well-known ones.
func (k *Kubelet) newNode(d desiredNode, extra map[string]string) *corev1.Node {
	labels := map[string]string{}
	for key, value := range extra {
		labels[key] = value
	}
	labels["kubernetes.io/hostname"] = d.name
	labels["kubernetes.io/os"] = "linux"
	labels["kubernetes.io/arch"] = "amd64"
	labels["beta.kubernetes.io/os"] = "linux"
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: d.name, Labels: labels}}
	if i := d.instance; i != nil {
		if i.Tags[ec2.RoleTag] == "server" {
			labels["node-role.kubernetes.io/control-plane"] = "true"
			labels["node-role.kubernetes.io/master"] = "true"
		}
		if i.Zone != "" {
			labels["topology.kubernetes.io/zone"] = i.Zone
			region := i.Zone
			for len(region) > 0 && region[len(region)-1] >= 'a' && region[len(region)-1] <= 'z' {
				region = region[:len(region)-1]
			}
			labels["topology.kubernetes.io/region"] = region
		}
		labels[InstanceLabel] = i.ID
		node.Spec.ProviderID = fmt.Sprintf("aws:///%s/%s", i.Zone, i.ID)
	}
	return node
}

func (k *Kubelet) updateNodeStatus(ctx context.Context, node *corev1.Node, ready bool, ip string) error {
	want := corev1.ConditionFalse
	reason, message := "KubeletNotReady", "simulated kubelet: node not ready"
	if ready {
		want, reason, message = corev1.ConditionTrue, "KubeletReady", "simulated kubelet is posting ready status"
	}
	cur := findNodeCondition(node.Status.Conditions, corev1.NodeReady)
	if cur != nil && cur.Status == want && node.Status.NodeInfo.KubeletVersion == k.cfg.Version && len(node.Status.Addresses) > 0 {
		return nil
	}
	now := metav1.Now()
	n := node.DeepCopy()
	conds := []corev1.NodeCondition{
		{Type: corev1.NodeMemoryPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasSufficientMemory"},
		{Type: corev1.NodeDiskPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasNoDiskPressure"},
		{Type: corev1.NodePIDPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasSufficientPID"},
		{Type: corev1.NodeReady, Status: want, Reason: reason, Message: message},
	}
	for i := range conds {
		conds[i].LastHeartbeatTime = now
		conds[i].LastTransitionTime = now
		if old := findNodeCondition(node.Status.Conditions, conds[i].Type); old != nil && old.Status == conds[i].Status {
			conds[i].LastTransitionTime = old.LastTransitionTime
		}
	}
	n.Status.Conditions = conds
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:              resource.MustParse("4"),
		corev1.ResourceMemory:           resource.MustParse("16Gi"),
		corev1.ResourcePods:             resource.MustParse("110"),
		corev1.ResourceEphemeralStorage: resource.MustParse("100Gi"),
	}
	n.Status.Capacity = capacity
	n.Status.Allocatable = capacity
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}, {Type: corev1.NodeHostName, Address: node.Name}}
	n.Status.NodeInfo = corev1.NodeSystemInfo{
		KubeletVersion:          k.cfg.Version,
		OperatingSystem:         "linux",
		Architecture:            "amd64",
		ContainerRuntimeVersion: "containerd://2.0.0",
		KernelVersion:           "6.1.0",
		OSImage:                 "phoenix testenv simulated kubelet",
		MachineID:               hash(node.Name)[:32],
		SystemUUID:              hash("uuid" + node.Name)[:32],
		BootID:                  hash("boot" + node.Name)[:32],
	}
	n.Status.DaemonEndpoints.KubeletEndpoint.Port = 10250
	if _, err := k.client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil && !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
		return fmt.Errorf("updating the status of node %s: %w", node.Name, err)
	}
	return nil
}

func (k *Kubelet) renewLease(ctx context.Context, node *corev1.Node) error {
	leases := k.client.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	now := metav1.NewMicroTime(time.Now())
	holder := node.Name
	duration := int32(40)
	lease, err := leases.Get(ctx, node.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		lease = &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{
				Name: node.Name, Namespace: corev1.NamespaceNodeLease,
				OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: node.Name, UID: node.UID}},
			},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseDurationSeconds: &duration, RenewTime: &now},
		}
		if _, err := leases.Create(ctx, lease, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) && !apierrors.IsNotFound(err) {
			return fmt.Errorf("creating the lease of node %s: %w", node.Name, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading the lease of node %s: %w", node.Name, err)
	}
	lease.Spec.HolderIdentity = &holder
	lease.Spec.LeaseDurationSeconds = &duration
	lease.Spec.RenewTime = &now
	if _, err := leases.Update(ctx, lease, metav1.UpdateOptions{}); err != nil && !apierrors.IsConflict(err) {
		return fmt.Errorf("renewing the lease of node %s: %w", node.Name, err)
	}
	return nil
}

func findNodeCondition(conds []corev1.NodeCondition, t corev1.NodeConditionType) *corev1.NodeCondition {
	for i := range conds {
		if conds[i].Type == t {
			return &conds[i]
		}
	}
	return nil
}

func hash(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

func (k *Kubelet) podWorker(ctx context.Context) {
	for {
		key, shutdown := k.queue.Get()
		if shutdown {
			return
		}
		if retry, err := k.syncPod(ctx, key); err != nil && ctx.Err() == nil {
			log.Printf("kubelet %s: pod %s: %v", k.cfg.Cluster, key, err)
			k.queue.AddAfter(key, time.Second)
		} else if retry > 0 {
			k.queue.AddAfter(key, retry)
		}
		k.queue.Done(key)
	}
}

func (k *Kubelet) managed(node string) (*nodeState, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	st, ok := k.nodes[node]
	return st, ok
}

// syncPod moves one pod a stage on; a positive duration asks to be called again after it.
func (k *Kubelet) syncPod(ctx context.Context, key string) (time.Duration, error) {
	obj, exists, err := k.pods.GetByKey(key)
	if err != nil || !exists {
		return 0, err
	}
	pod, ok := obj.(*corev1.Pod)
	if !ok || pod.Spec.NodeName == "" {
		return 0, nil
	}
	node, ok := k.managed(pod.Spec.NodeName)
	if !ok {
		// The node may not have been synced yet.
		return time.Second, nil
	}
	pods := k.client.CoreV1().Pods(pod.Namespace)
	if pod.DeletionTimestamp != nil {
		zero := int64(0)
		uid := pod.UID
		err := pods.Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero, Preconditions: &metav1.Preconditions{UID: &uid}})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return 0, fmt.Errorf("finalizing deleted pod: %w", err)
		}
		return 0, nil
	}
	if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return 0, nil
	}
	if pod.Status.Phase == corev1.PodRunning {
		return 0, nil
	}
	k.mu.Lock()
	scheduled, seen := k.boundAt[pod.UID]
	if !seen {
		scheduled = time.Now()
		k.boundAt[pod.UID] = scheduled
	}
	k.mu.Unlock()
	delay := k.cfg.ReadyDelay
	if d, err := time.ParseDuration(pod.Annotations[PodReadyDelayAnnotation]); err == nil {
		delay = d
	}
	if wait := time.Until(scheduled.Add(delay)); wait > 0 {
		return wait, nil
	}
	k.mu.Lock()
	node.podIPs++
	ipIndex := node.podIPs
	hostIP := node.ip
	k.mu.Unlock()
	status := runningStatus(pod, hostIP, podIP(pod.Spec.NodeName, ipIndex), isJobPod(pod))
	if code, err := strconv.Atoi(pod.Annotations[PodExitCodeAnnotation]); err == nil && code != 0 {
		failStatus(pod, &status, int32(code))
	} else if pod.Annotations[PodReadyAnnotation] == "never" {
		notReadyStatus(&status)
	}
	updated := pod.DeepCopy()
	updated.Status = status
	if _, err := pods.UpdateStatus(ctx, updated, metav1.UpdateOptions{}); err != nil {
		if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
			return 0, nil
		}
		return 0, fmt.Errorf("reporting pod status: %w", err)
	}
	return 0, nil
}

func podIP(node string, index int) string {
	h := sha256.Sum256([]byte(node))
	return fmt.Sprintf("10.42.%d.%d", int(h[0]), 2+index%250)
}

func isJobPod(pod *corev1.Pod) bool {
	for _, o := range pod.OwnerReferences {
		if o.Kind == "Job" && o.Controller != nil && *o.Controller {
			return true
		}
	}
	return false
}

func runningStatus(pod *corev1.Pod, hostIP, ip string, complete bool) corev1.PodStatus {
	now := metav1.Now()
	st := *pod.Status.DeepCopy()
	st.HostIP = hostIP
	st.HostIPs = []corev1.HostIP{{IP: hostIP}}
	st.PodIP = ip
	st.PodIPs = []corev1.PodIP{{IP: ip}}
	if st.StartTime == nil {
		st.StartTime = &now
	}
	ready := corev1.ConditionTrue
	readyReason := ""
	st.Phase = corev1.PodRunning
	if complete {
		st.Phase = corev1.PodSucceeded
		ready = corev1.ConditionFalse
		readyReason = "PodCompleted"
	}
	setPodCondition(&st, corev1.PodCondition{Type: corev1.PodReadyToStartContainers, Status: corev1.ConditionTrue, LastTransitionTime: now})
	setPodCondition(&st, corev1.PodCondition{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: now, Reason: readyReason})
	setPodCondition(&st, corev1.PodCondition{Type: corev1.ContainersReady, Status: ready, LastTransitionTime: now, Reason: readyReason})
	setPodCondition(&st, corev1.PodCondition{Type: corev1.PodReady, Status: ready, LastTransitionTime: now, Reason: readyReason})
	setPodCondition(&st, corev1.PodCondition{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now})
	st.InitContainerStatuses = nil
	for _, c := range pod.Spec.InitContainers {
		st.InitContainerStatuses = append(st.InitContainerStatuses, corev1.ContainerStatus{
			Name: c.Name, Image: c.Image, ImageID: imageID(c.Image), ContainerID: containerID(pod, c.Name),
			Ready: true, State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 0, Reason: "Completed", StartedAt: now, FinishedAt: now}},
		})
	}
	st.ContainerStatuses = nil
	started := true
	for _, c := range pod.Spec.Containers {
		cs := corev1.ContainerStatus{
			Name: c.Name, Image: c.Image, ImageID: imageID(c.Image), ContainerID: containerID(pod, c.Name),
			Ready: !complete, Started: &started,
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
		}
		if complete {
			notStarted := false
			cs.Started = &notStarted
			cs.State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 0, Reason: "Completed", StartedAt: now, FinishedAt: now}}
		}
		st.ContainerStatuses = append(st.ContainerStatuses, cs)
	}
	return st
}

// failStatus makes every container exit with code: the pod fails, or under restartPolicy Always it crash-loops.
func failStatus(pod *corev1.Pod, st *corev1.PodStatus, code int32) {
	now := metav1.Now()
	crashLoop := pod.Spec.RestartPolicy == corev1.RestartPolicyAlways || pod.Spec.RestartPolicy == ""
	st.Phase = corev1.PodFailed
	if crashLoop {
		st.Phase = corev1.PodRunning
	}
	for i := range st.ContainerStatuses {
		cs := &st.ContainerStatuses[i]
		notStarted := false
		cs.Ready = false
		cs.Started = &notStarted
		terminated := &corev1.ContainerStateTerminated{ExitCode: code, Reason: "Error", StartedAt: now, FinishedAt: now}
		if crashLoop {
			cs.RestartCount = 1
			cs.LastTerminationState = corev1.ContainerState{Terminated: terminated}
			cs.State = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff", Message: fmt.Sprintf("back-off restarting failed container %s", cs.Name)}}
		} else {
			cs.State = corev1.ContainerState{Terminated: terminated}
		}
	}
	notReady(st, "ContainersNotReady")
}

// notReadyStatus leaves the containers running but failing readiness.
func notReadyStatus(st *corev1.PodStatus) {
	for i := range st.ContainerStatuses {
		st.ContainerStatuses[i].Ready = false
	}
	notReady(st, "ContainersNotReady")
}

func notReady(st *corev1.PodStatus, reason string) {
	for i := range st.Conditions {
		if t := st.Conditions[i].Type; t == corev1.PodReady || t == corev1.ContainersReady {
			st.Conditions[i].Status = corev1.ConditionFalse
			st.Conditions[i].Reason = reason
		}
	}
}

func setPodCondition(st *corev1.PodStatus, c corev1.PodCondition) {
	for i := range st.Conditions {
		if st.Conditions[i].Type == c.Type {
			if st.Conditions[i].Status == c.Status {
				c.LastTransitionTime = st.Conditions[i].LastTransitionTime
			}
			st.Conditions[i] = c
			return
		}
	}
	st.Conditions = append(st.Conditions, c)
}

func imageID(image string) string { return "docker.io/library/" + image + "@sha256:" + hash(image) }

func containerID(pod *corev1.Pod, name string) string {
	return "containerd://" + hash(string(pod.UID)+"/"+name)
}

// SetReady records the harness's wish for a node's readiness on the Node itself (the annotation this kubelet
// honours) and waits, bounded, until the node's Ready condition shows it. It reports false when the node does
// not exist.
func SetReady(ctx context.Context, client kubernetes.Interface, node string, ready bool, timeout time.Duration) (bool, error) {
	value := "true"
	if !ready {
		value = "false"
	}
	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, ReadyAnnotation, value)
	if _, err := client.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return false, fmt.Errorf("annotating node %s: %w", node, err)
	}
	want := corev1.ConditionFalse
	if ready {
		want = corev1.ConditionTrue
	}
	deadline := time.Now().Add(timeout)
	for {
		n, err := client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return false, fmt.Errorf("reading node %s: %w", node, err)
		}
		if c := findNodeCondition(n.Status.Conditions, corev1.NodeReady); c != nil && c.Status == want {
			return true, nil
		}
		if time.Now().After(deadline) {
			return true, fmt.Errorf("node %s did not report Ready=%s within %s", node, want, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
