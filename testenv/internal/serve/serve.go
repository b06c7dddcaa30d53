// Package serve is the harness: one etcd, then one Kubernetes control plane per cluster name (kube-apiserver,
// kube-controller-manager and kube-scheduler from k8s.io/kubernetes, and the simulated kubelet), each started on
// first use, all behind one plain-HTTP router on loopback that serves /clusters/NAME/... and holds the admin
// credentials itself. Clusters share the etcd under per-cluster key prefixes.
package serve

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/phoenix/testenv/internal/ec2"
	"github.com/phoenix/testenv/internal/pki"
	"github.com/phoenix/testenv/internal/proc"
)

// Options are the harness's flags.
type Options struct {
	Listen           string
	Dir              string
	Bin              string
	EC2Endpoint      string
	EC2Region        string
	EC2Poll          time.Duration
	NodeVersion      string
	NodeDelay        time.Duration
	ReadyDelay       time.Duration
	StaticNodes      int
	DefaultCluster   bool
	DeleteTerminated bool
	StartTimeout     time.Duration
	APIServerArgs    []string
	K3sAddons        bool
}

// Harness owns etcd, the clusters and the router.
type Harness struct {
	opts     Options
	pki      pki.Files
	tokens   tokens
	etcd     *proc.Process
	etcdURL  string
	etcdCli  *clientv3.Client
	caPool   *x509.CertPool
	mu       sync.Mutex
	clusters map[string]*Cluster
	stopping bool
	// incarnations numbers every cluster started, for its own etcd prefix and directory.
	incarnations uint64
}

type tokens struct{ admin, controllerManager, scheduler string }

var clusterName = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, " ") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// Main parses flags and runs until SIGINT/SIGTERM.
func Main(args []string) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	var o Options
	var extra listFlag
	fs.StringVar(&o.Listen, "listen", "127.0.0.1:0", "router address (loopback)")
	fs.StringVar(&o.Dir, "dir", "", "working directory for etcd data, certificates, kubeconfigs and logs (required)")
	fs.StringVar(&o.EC2Endpoint, "ec2-endpoint", "", "EC2 Query API endpoint (moto): nodes join as instances tagged phoenix:env=CLUSTER appear")
	fs.StringVar(&o.EC2Region, "ec2-region", "us-east-1", "region of --ec2-endpoint")
	fs.DurationVar(&o.EC2Poll, "ec2-poll", 300*time.Millisecond, "how often EC2 is polled")
	fs.StringVar(&o.NodeVersion, "node-version", "v1.37.2", "kubeletVersion the simulated nodes report")
	fs.DurationVar(&o.NodeDelay, "node-delay", 300*time.Millisecond, "how long a new node stays NotReady")
	fs.DurationVar(&o.ReadyDelay, "ready-delay", 300*time.Millisecond, "how long a bound pod takes to become Running and Ready")
	fs.IntVar(&o.StaticNodes, "static-nodes", 0, "nodes node-1..node-N registered in every cluster regardless of EC2")
	fs.BoolVar(&o.DefaultCluster, "default-cluster", false, "start the cluster named default at once and print its kubeconfig")
	fs.BoolVar(&o.DeleteTerminated, "delete-terminated-nodes", true, "delete the Node of an instance that terminated")
	fs.DurationVar(&o.StartTimeout, "start-timeout", 3*time.Minute, "how long one cluster may take to start")
	fs.BoolVar(&o.K3sAddons, "k3s-addons", false, "give every cluster what a k3s server deploys at boot (CoreDNS in kube-system)")
	fs.Var(&extra, "apiserver-arg", "extra kube-apiserver flag (--key=value), repeatable")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	o.APIServerArgs = extra
	if o.Dir == "" {
		fmt.Fprintln(os.Stderr, "testenv serve: --dir is required")
		return 2
	}
	bin, err := os.Executable()
	if err != nil {
		fmt.Fprintf(os.Stderr, "testenv serve: finding its own binary: %v\n", err)
		return 1
	}
	o.Bin = bin
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := Run(ctx, o); err != nil {
		fmt.Fprintf(os.Stderr, "testenv serve: %v\n", err)
		return 1
	}
	return 0
}

// Run starts etcd and the router, prints the endpoint, and serves until ctx ends.
func Run(ctx context.Context, o Options) error {
	host, _, err := net.SplitHostPort(o.Listen)
	if err != nil {
		return fmt.Errorf("--listen %q: %w", o.Listen, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("--listen %q: only loopback addresses are allowed", o.Listen)
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return fmt.Errorf("--dir %q: %w", o.Dir, err)
	}
	o.Dir = dir
	h := &Harness{opts: o, clusters: map[string]*Cluster{}}
	if h.pki, err = pki.Generate(filepath.Join(dir, "pki")); err != nil {
		return err
	}
	caPEM, err := os.ReadFile(h.pki.CACert)
	if err != nil {
		return fmt.Errorf("reading the CA: %w", err)
	}
	h.caPool = x509.NewCertPool()
	h.caPool.AppendCertsFromPEM(caPEM)
	h.tokens = tokens{admin: pki.Token(), controllerManager: pki.Token(), scheduler: pki.Token()}
	tokenFile := filepath.Join(dir, "pki", "tokens.csv")
	lines := fmt.Sprintf("%s,admin,admin,\"system:masters\"\n%s,system:kube-controller-manager,kcm,\n%s,system:kube-scheduler,sched,\n",
		h.tokens.admin, h.tokens.controllerManager, h.tokens.scheduler)
	if err := os.WriteFile(tokenFile, []byte(lines), 0o600); err != nil {
		return fmt.Errorf("writing the token file: %w", err)
	}
	if err := h.startEtcd(ctx); err != nil {
		h.shutdown()
		return err
	}
	defer h.shutdown()

	ln, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", o.Listen, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 30 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Printf("router: %v", err)
		}
	}()
	fmt.Printf("endpoint: http://%s/clusters/{env}\n", ln.Addr())
	if o.DefaultCluster {
		c, err := h.cluster(ctx, "default", booted)
		if err != nil {
			return err
		}
		fmt.Printf("kubeconfig: %s\n", c.kubeconfig)
	}
	fmt.Println("ready")
	if o.EC2Endpoint != "" {
		go h.watchEC2(ctx)
	}
	<-ctx.Done()
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(shutdownCtx)
	return nil
}

func (h *Harness) startEtcd(ctx context.Context) error {
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		client, err := proc.FreePort()
		if err != nil {
			return err
		}
		peer, err := proc.FreePort()
		if err != nil {
			return err
		}
		clientURL := fmt.Sprintf("http://127.0.0.1:%d", client)
		peerURL := fmt.Sprintf("http://127.0.0.1:%d", peer)
		dataDir := filepath.Join(h.opts.Dir, "etcd")
		_ = os.RemoveAll(dataDir)
		args := append([]string{"etcd"}, proc.Args(map[string]string{
			"name":                        "testenv",
			"data-dir":                    dataDir,
			"listen-client-urls":          clientURL,
			"advertise-client-urls":       clientURL,
			"listen-peer-urls":            peerURL,
			"initial-advertise-peer-urls": peerURL,
			"initial-cluster":             "testenv=" + peerURL,
			"unsafe-no-fsync":             "true",
			"quota-backend-bytes":         strconv.Itoa(4 << 30),
			"log-level":                   "warn",
		})...)
		p, err := proc.Start("etcd", h.opts.Bin, args, filepath.Join(h.opts.Dir, "etcd.log"))
		if err != nil {
			return err
		}
		httpc := &http.Client{Timeout: 2 * time.Second}
		lastErr = p.WaitReady(ctx, "etcd /health", 60*time.Second, func(ctx context.Context) error {
			return getOK(ctx, httpc, clientURL+"/health", "")
		})
		if lastErr != nil {
			p.Stop(5 * time.Second)
			continue
		}
		h.etcd = p
		h.etcdURL = clientURL
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{clientURL}, DialTimeout: 5 * time.Second})
		if err != nil {
			return fmt.Errorf("connecting to etcd: %w", err)
		}
		h.etcdCli = cli
		return nil
	}
	return fmt.Errorf("starting etcd: %w", lastErr)
}

func (h *Harness) shutdown() {
	h.mu.Lock()
	h.stopping = true
	cs := make([]*Cluster, 0, len(h.clusters))
	for _, c := range h.clusters {
		cs = append(cs, c)
	}
	h.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Add(1)
		go func(c *Cluster) { defer wg.Done(); c.stop() }(c)
	}
	wg.Wait()
	if h.etcdCli != nil {
		h.etcdCli.Close()
	}
	if h.etcd != nil {
		h.etcd.Stop(10 * time.Second)
	}
}

type waitFor int

const (
	noWait   waitFor = iota
	apiReady         // the API server answers
	booted           // everything, including the default ServiceAccount and the k3s add-ons
)

// cluster returns the named cluster, starting it if needed, after waiting as asked.
func (h *Harness) cluster(ctx context.Context, name string, wait waitFor) (*Cluster, error) {
	if !clusterName.MatchString(name) {
		return nil, fmt.Errorf("cluster name %q is not a DNS-1123 label", name)
	}
	h.mu.Lock()
	if h.stopping {
		h.mu.Unlock()
		return nil, errors.New("the harness is stopping")
	}
	c, ok := h.clusters[name]
	if !ok {
		c = newCluster(h, name)
		h.clusters[name] = c
		go c.start(context.Background())
	}
	h.mu.Unlock()
	ch := c.ready
	switch wait {
	case noWait:
		return c, nil
	case apiReady:
		ch = c.apiReady
	}
	select {
	case <-ch:
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for cluster %s to start: %w", name, ctx.Err())
	}
	if wait == apiReady {
		select {
		case <-c.ready:
		default:
			if c.proxy != nil {
				return c, nil
			}
		}
	}
	if c.err != nil {
		return nil, c.err
	}
	return c, nil
}

// wipe stops a cluster's components and deletes its keys: the control plane lived on its machines.
func (h *Harness) wipe(ctx context.Context, name string) bool {
	h.mu.Lock()
	c, ok := h.clusters[name]
	if ok {
		delete(h.clusters, name)
	}
	h.mu.Unlock()
	if !ok {
		return false
	}
	<-c.ready
	c.stop()
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := h.etcdCli.Delete(dctx, c.prefix+"/", clientv3.WithPrefix()); err != nil {
		log.Printf("wiping the keys of cluster %s: %v", name, err)
	}
	_ = os.RemoveAll(c.dir)
	return true
}

// watchEC2 starts a cluster as soon as one of its instances runs, and wipes a cluster whose instances are all
// gone, as on EC2 where the control plane lives on the instances.
func (h *Harness) watchEC2(ctx context.Context) {
	client := ec2.NewClient(h.opts.EC2Endpoint, h.opts.EC2Region)
	ticker := time.NewTicker(h.opts.EC2Poll)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		instances, err := client.Describe(ctx)
		if err != nil {
			continue
		}
		alive := map[string]bool{}
		for _, i := range instances {
			env := i.Tags[ec2.EnvTag]
			if !clusterName.MatchString(env) {
				continue
			}
			switch i.State {
			case "running":
				alive[env] = true
				if c, err := h.cluster(ctx, env, noWait); err == nil {
					c.markEC2()
				}
			case "pending", "stopping", "stopped":
				if _, ok := alive[env]; !ok {
					alive[env] = false
				}
			}
		}
		h.mu.Lock()
		var gone []string
		for name, c := range h.clusters {
			if _, ok := alive[name]; !ok && c.ec2Backed() {
				gone = append(gone, name)
			}
		}
		h.mu.Unlock()
		for _, name := range gone {
			h.wipe(ctx, name)
		}
	}
}

// ServeHTTP routes /clusters/NAME/... to that cluster's API server and /testenv/... to the control API.
func (h *Harness) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := r.URL.Path
	switch {
	case path == "/healthz":
		_, _ = w.Write([]byte("ok"))
	case strings.HasPrefix(path, "/clusters/"):
		rest := strings.TrimPrefix(path, "/clusters/")
		name, sub, _ := strings.Cut(rest, "/")
		c, err := h.cluster(r.Context(), name, apiReady)
		if err != nil {
			writeStatus(w, http.StatusServiceUnavailable, err.Error())
			return
		}
		_ = sub
		c.proxy.ServeHTTP(w, r)
	case strings.HasPrefix(path, "/testenv/"):
		h.control(w, r, strings.TrimPrefix(path, "/testenv/"))
	default:
		writeStatus(w, http.StatusNotFound, "testenv serves /clusters/NAME/... and /testenv/...")
	}
}

// control is the harness's own API for tests:
//
//	GET    /testenv/clusters                          names of the running clusters
//	POST   /testenv/clusters/NAME                     start (if needed) and wait
//	GET    /testenv/clusters/NAME/kubeconfig          direct TLS admin kubeconfig of the cluster
//	DELETE /testenv/clusters/NAME                     wipe: stop its components and delete its keys
//	POST   /testenv/clusters/NAME/nodes/NODE/ready?value=true|false
func (h *Harness) control(w http.ResponseWriter, r *http.Request, path string) {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	if len(parts) == 1 && parts[0] == "clusters" && r.Method == http.MethodGet {
		h.mu.Lock()
		names := make([]string, 0, len(h.clusters))
		for n := range h.clusters {
			names = append(names, n)
		}
		h.mu.Unlock()
		sort.Strings(names)
		writeJSON(w, names)
		return
	}
	if len(parts) < 2 || parts[0] != "clusters" {
		writeStatus(w, http.StatusNotFound, "unknown control path")
		return
	}
	name := parts[1]
	switch {
	case len(parts) == 2 && r.Method == http.MethodDelete:
		if !h.wipe(context.WithoutCancel(r.Context()), name) {
			writeStatus(w, http.StatusNotFound, "no cluster "+name)
			return
		}
		writeStatus(w, http.StatusOK, "wiped "+name)
	case len(parts) == 2 && r.Method == http.MethodPost:
		c, err := h.cluster(r.Context(), name, booted)
		if err != nil {
			writeStatus(w, http.StatusServiceUnavailable, err.Error())
			return
		}
		writeJSON(w, map[string]string{"server": c.server, "kubeconfig": c.kubeconfig})
	case len(parts) == 3 && parts[2] == "kubeconfig" && r.Method == http.MethodGet:
		c, err := h.cluster(r.Context(), name, booted)
		if err != nil {
			writeStatus(w, http.StatusServiceUnavailable, err.Error())
			return
		}
		http.ServeFile(w, r, c.kubeconfig)
	case len(parts) == 5 && parts[2] == "nodes" && parts[4] == "ready" && r.Method == http.MethodPost:
		c, err := h.cluster(r.Context(), name, booted)
		if err != nil {
			writeStatus(w, http.StatusServiceUnavailable, err.Error())
			return
		}
		ready, err := strconv.ParseBool(r.URL.Query().Get("value"))
		if err != nil {
			writeStatus(w, http.StatusBadRequest, "value must be true or false")
			return
		}
		// Not the request's context: a client that half-closes its connection must not cancel the change.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 30*time.Second)
		defer cancel()
		found, err := c.setReady(ctx, parts[3], ready)
		switch {
		case err != nil:
			writeStatus(w, http.StatusInternalServerError, err.Error())
		case !found:
			writeStatus(w, http.StatusNotFound, "no node "+parts[3])
		default:
			writeStatus(w, http.StatusOK, "ok")
		}
	default:
		writeStatus(w, http.StatusNotFound, "unknown control path")
	}
}

func writeStatus(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(msg + "\n"))
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func getOK(ctx context.Context, c *http.Client, u, token string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: HTTP %d", u, resp.StatusCode)
	}
	return nil
}

func newProxy(target *url.URL, prefix, token string, pool *x509.CertPool) *httputil.ReverseProxy {
	transport := &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
	}
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			p := strings.TrimPrefix(pr.In.URL.Path, prefix)
			if p == "" {
				p = "/"
			}
			pr.Out.URL.Path = p
			pr.Out.URL.RawPath = ""
			if raw := pr.In.URL.RawPath; raw != "" {
				pr.Out.URL.RawPath = strings.TrimPrefix(raw, prefix)
			}
			pr.Out.Header.Set("Authorization", "Bearer "+token)
		},
		Transport:     transport,
		FlushInterval: -1,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			writeStatus(w, http.StatusBadGateway, "testenv router: "+err.Error())
		},
	}
}
