// Command testenv is the real Kubernetes control plane phoenix's tests run on: one multicall binary whose
// subcommands are the upstream etcd, kube-apiserver, kube-controller-manager and kube-scheduler commands
// (started unchanged, each as its own process), the project's simulated kubelet, and `serve`, the harness that
// starts them and routes /clusters/NAME/... to one control plane per cluster.
package main

import (
	"fmt"
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
	"k8s.io/component-base/cli"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"

	"github.com/phoenix/testenv/internal/kubelet"
	"github.com/phoenix/testenv/internal/serve"
)

const usage = `usage: testenv COMMAND [flags]

commands:
  serve                     the harness: etcd, a control plane per cluster on first use, the /clusters/NAME router
  etcd                      upstream etcd (etcdmain)
  kube-apiserver            upstream kube-apiserver
  kube-controller-manager   upstream kube-controller-manager
  kube-scheduler            upstream kube-scheduler
  kubelet                   the simulated kubelet of one cluster
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	cmd, rest := os.Args[1], os.Args[2:]
	switch cmd {
	case "serve":
		os.Exit(serve.Main(rest))
	case "kubelet":
		os.Exit(kubelet.Main(rest))
	case "etcd":
		// etcdmain reads its flags from args[1:].
		etcdmain.Main(append([]string{"etcd"}, rest...))
	case "kube-apiserver":
		os.Args = append([]string{cmd}, rest...)
		os.Exit(cli.Run(apiserver.NewAPIServerCommand()))
	case "kube-controller-manager":
		os.Args = append([]string{cmd}, rest...)
		os.Exit(cli.Run(controllermanager.NewControllerManagerCommand()))
	case "kube-scheduler":
		os.Args = append([]string{cmd}, rest...)
		os.Exit(cli.Run(scheduler.NewSchedulerCommand()))
	case "-h", "--help", "help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "testenv: unknown command %q\n\n%s", cmd, usage)
		os.Exit(2)
	}
}
