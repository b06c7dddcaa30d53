package kubelet

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/phoenix/testenv/internal/ec2"
)

// Main runs the simulated kubelet of one cluster until SIGINT/SIGTERM.
func Main(args []string) int {
	fs := flag.NewFlagSet("kubelet", flag.ContinueOnError)
	var cfg Config
	var kubeconfig, endpoint, region string
	var static int
	fs.StringVar(&kubeconfig, "kubeconfig", "", "admin kubeconfig of the cluster (required)")
	fs.StringVar(&cfg.Cluster, "cluster", "", "cluster name: instances tagged phoenix:env=NAME become its nodes (required)")
	fs.StringVar(&endpoint, "ec2-endpoint", "", "EC2 Query API endpoint; empty: no instance-backed nodes")
	fs.StringVar(&region, "ec2-region", "us-east-1", "region of --ec2-endpoint")
	fs.DurationVar(&cfg.Poll, "poll", 300*time.Millisecond, "how often nodes are reconciled")
	fs.StringVar(&cfg.Version, "version", "v1.37.2", "kubeletVersion reported by the nodes")
	fs.DurationVar(&cfg.NodeDelay, "node-delay", 300*time.Millisecond, "how long a new node stays NotReady")
	fs.DurationVar(&cfg.ReadyDelay, "ready-delay", 300*time.Millisecond, "how long a bound pod takes to run")
	fs.IntVar(&static, "static-nodes", 0, "nodes node-1..node-N registered regardless of EC2")
	fs.BoolVar(&cfg.DeleteTerminated, "delete-terminated-nodes", true, "delete the Node of a terminated instance")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if kubeconfig == "" || cfg.Cluster == "" {
		fmt.Fprintln(os.Stderr, "testenv kubelet: --kubeconfig and --cluster are required")
		return 2
	}
	for i := 1; i <= static; i++ {
		cfg.StaticNodes = append(cfg.StaticNodes, fmt.Sprintf("node-%d", i))
	}
	if endpoint != "" {
		cfg.EC2 = ec2.NewClient(endpoint, region)
	}
	rest, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		fmt.Fprintf(os.Stderr, "testenv kubelet: loading %s: %v\n", kubeconfig, err)
		return 1
	}
	rest.Timeout = 15 * time.Second
	rest.QPS = 200
	rest.Burst = 400
	client, err := kubernetes.NewForConfig(rest)
	if err != nil {
		fmt.Fprintf(os.Stderr, "testenv kubelet: building a client: %v\n", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := New(cfg, client).Run(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "testenv kubelet: %v\n", err)
		return 1
	}
	return 0
}
