package serve

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/phoenix/testenv/internal/kubelet"
	"github.com/phoenix/testenv/internal/proc"
)

// Cluster is one control plane: its processes, its direct address and the router's proxy to it.
type Cluster struct {
	h    *Harness
	name string
	// prefix (etcd) and dir are this incarnation's own: a cluster started while its wiped predecessor is still
	// stopping must not lose the keys it has just written to that predecessor's deletion.
	prefix     string
	dir        string
	server     string
	kubeconfig string
	proxy      *httputil.ReverseProxy
	client     kubernetes.Interface

	// apiReady is closed once the API server answers /readyz (the router proxies from then on, as a real
	// endpoint answers before its nodes and add-ons are there); ready once the whole boot has finished.
	apiReady chan struct{}
	apiOnce  sync.Once
	ready    chan struct{}
	err      error

	mu      sync.Mutex
	procs   []*proc.Process
	stopped bool
	fromEC2 bool
}

// newCluster is called with h.mu held.
func newCluster(h *Harness, name string) *Cluster {
	h.incarnations++
	n := h.incarnations
	return &Cluster{
		h:        h,
		name:     name,
		prefix:   fmt.Sprintf("/clusters/%s/%d", name, n),
		dir:      filepath.Join(h.opts.Dir, "clusters", fmt.Sprintf("%s-%d", name, n)),
		apiReady: make(chan struct{}),
		ready:    make(chan struct{}),
	}
}

func (c *Cluster) markEC2() {
	c.mu.Lock()
	c.fromEC2 = true
	c.mu.Unlock()
}

func (c *Cluster) ec2Backed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.fromEC2
}

func (c *Cluster) add(p *proc.Process) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return false
	}
	c.procs = append(c.procs, p)
	return true
}

// stop ends the components, newest first. Idempotent.
func (c *Cluster) stop() {
	c.mu.Lock()
	c.stopped = true
	procs := c.procs
	c.procs = nil
	c.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		procs[i].Stop(5 * time.Second)
	}
}

func (c *Cluster) start(ctx context.Context) {
	start := time.Now()
	c.err = c.boot(ctx)
	if c.err != nil {
		c.stop()
		c.h.mu.Lock()
		if c.h.clusters[c.name] == c {
			delete(c.h.clusters, c.name)
		}
		c.h.mu.Unlock()
		c.err = fmt.Errorf("starting cluster %s: %w", c.name, c.err)
	} else {
		fmt.Fprintf(os.Stderr, "testenv: cluster %s ready in %s\n", c.name, time.Since(start).Round(time.Millisecond))
	}
	c.apiOnce.Do(func() { close(c.apiReady) })
	close(c.ready)
}

func (c *Cluster) boot(ctx context.Context) error {
	_ = os.RemoveAll(c.dir)
	if err := os.MkdirAll(c.dir, 0o700); err != nil {
		return fmt.Errorf("creating %s: %w", c.dir, err)
	}
	h := c.h
	var port int
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		p, err := proc.FreePort()
		if err != nil {
			return err
		}
		flags := map[string]string{
			"etcd-servers":                     h.etcdURL,
			"etcd-prefix":                      c.prefix,
			"bind-address":                     "127.0.0.1",
			"advertise-address":                "127.0.0.1",
			"secure-port":                      fmt.Sprint(p),
			"cert-dir":                         filepath.Join(c.dir, "certs"),
			"tls-cert-file":                    h.pki.ServingCert,
			"tls-private-key-file":             h.pki.ServingKey,
			"client-ca-file":                   h.pki.CACert,
			"token-auth-file":                  filepath.Join(h.opts.Dir, "pki", "tokens.csv"),
			"authorization-mode":               "RBAC",
			"service-account-issuer":           "https://kubernetes.default.svc.cluster.local",
			"service-account-key-file":         h.pki.SAPublic,
			"service-account-signing-key-file": h.pki.SAPrivate,
			"service-cluster-ip-range":         "10.96.0.0/16",
			"allow-privileged":                 "true",
			"endpoint-reconciler-type":         "none",
			"profiling":                        "false",
			"v":                                "0",
		}
		for _, a := range h.opts.APIServerArgs {
			k, v, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
			flags[k] = v
		}
		args := append([]string{"kube-apiserver"}, proc.Args(flags)...)
		ap, err := proc.Start("kube-apiserver "+c.name, h.opts.Bin, args, filepath.Join(c.dir, "kube-apiserver.log"))
		if err != nil {
			return err
		}
		if !c.add(ap) {
			ap.Stop(time.Second)
			return fmt.Errorf("stopped while starting")
		}
		httpc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: h.caPool}}}
		lastErr = ap.WaitReady(ctx, "/readyz", h.opts.StartTimeout, func(ctx context.Context) error {
			return getOK(ctx, httpc, fmt.Sprintf("https://127.0.0.1:%d/readyz", p), h.tokens.admin)
		})
		if lastErr == nil {
			port = p
			break
		}
		ap.Stop(5 * time.Second)
	}
	if port == 0 {
		return lastErr
	}
	c.server = fmt.Sprintf("https://127.0.0.1:%d", port)
	target, _ := url.Parse(c.server)
	c.proxy = newProxy(target, "/clusters/"+c.name, h.tokens.admin, h.caPool)
	c.apiOnce.Do(func() { close(c.apiReady) })

	c.kubeconfig = filepath.Join(c.dir, "kubeconfig")
	if err := writeKubeconfig(c.kubeconfig, c.name, c.server, h.pki.CACert, h.tokens.admin); err != nil {
		return err
	}
	cmKubeconfig := filepath.Join(c.dir, "controller-manager.kubeconfig")
	if err := writeKubeconfig(cmKubeconfig, c.name, c.server, h.pki.CACert, h.tokens.controllerManager); err != nil {
		return err
	}
	schedKubeconfig := filepath.Join(c.dir, "scheduler.kubeconfig")
	if err := writeKubeconfig(schedKubeconfig, c.name, c.server, h.pki.CACert, h.tokens.scheduler); err != nil {
		return err
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", c.kubeconfig)
	if err != nil {
		return fmt.Errorf("loading %s: %w", c.kubeconfig, err)
	}
	cfg.Timeout = 15 * time.Second
	if c.client, err = kubernetes.NewForConfig(cfg); err != nil {
		return fmt.Errorf("building a client for %s: %w", c.name, err)
	}

	cm := append([]string{"kube-controller-manager"}, proc.Args(map[string]string{
		"kubeconfig":                       cmKubeconfig,
		"leader-elect":                     "false",
		"secure-port":                      "0",
		"service-account-private-key-file": h.pki.SAPrivate,
		"root-ca-file":                     h.pki.CACert,
		"cluster-signing-cert-file":        h.pki.CACert,
		"cluster-signing-key-file":         h.pki.CAKey,
		"use-service-account-credentials":  "true",
		"controllers":                      "*",
		"concurrent-deployment-syncs":      "10",
		"concurrent-replicaset-syncs":      "10",
		"concurrent-namespace-syncs":       "10",
		"concurrent-gc-syncs":              "20",
		"v":                                "0",
	})...)
	sched := append([]string{"kube-scheduler"}, proc.Args(map[string]string{
		"kubeconfig":   schedKubeconfig,
		"leader-elect": "false",
		"secure-port":  "0",
		"v":            "0",
	})...)
	kl := append([]string{"kubelet"}, proc.Args(map[string]string{
		"kubeconfig":              c.kubeconfig,
		"cluster":                 c.name,
		"ec2-endpoint":            h.opts.EC2Endpoint,
		"ec2-region":              h.opts.EC2Region,
		"poll":                    h.opts.EC2Poll.String(),
		"version":                 h.opts.NodeVersion,
		"node-delay":              h.opts.NodeDelay.String(),
		"ready-delay":             h.opts.ReadyDelay.String(),
		"static-nodes":            fmt.Sprint(h.opts.StaticNodes),
		"delete-terminated-nodes": fmt.Sprint(h.opts.DeleteTerminated),
	})...)
	for _, spec := range []struct {
		name string
		args []string
	}{
		{"kube-controller-manager", cm},
		{"kube-scheduler", sched},
		{"kubelet", kl},
	} {
		p, err := proc.Start(spec.name+" "+c.name, h.opts.Bin, spec.args, filepath.Join(c.dir, spec.name+".log"))
		if err != nil {
			return err
		}
		if !c.add(p) {
			p.Stop(time.Second)
			return fmt.Errorf("stopped while starting")
		}
	}
	// The cluster is usable once the controller manager has made the default ServiceAccount: until then the
	// ServiceAccount admission plugin refuses every pod.
	var last error
	deadline := time.Now().Add(h.opts.StartTimeout)
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, last = c.client.CoreV1().ServiceAccounts("default").Get(cctx, "default", metav1.GetOptions{})
		cancel()
		if last == nil {
			if h.opts.K3sAddons {
				actx, cancel := context.WithTimeout(ctx, 30*time.Second)
				defer cancel()
				return k3sAddons(actx, c.client)
			}
			return nil
		}
		if !apierrors.IsNotFound(last) && time.Now().After(deadline) {
			return fmt.Errorf("waiting for the default ServiceAccount: %w", last)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the controller manager made no default ServiceAccount within %s; see %s", h.opts.StartTimeout, filepath.Join(c.dir, "kube-controller-manager.log"))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (c *Cluster) setReady(ctx context.Context, node string, ready bool) (bool, error) {
	return kubelet.SetReady(ctx, c.client, node, ready, 15*time.Second)
}

func writeKubeconfig(path, name, server, caFile, token string) error {
	ca, err := os.ReadFile(caFile)
	if err != nil {
		return fmt.Errorf("reading %s: %w", caFile, err)
	}
	cfg := clientcmdapiConfig(name, server, ca, token)
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return os.Chmod(path, 0o600)
}
