package serve

import (
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// clientcmdapiConfig is a kubeconfig with one cluster, user and context, all named name.
func clientcmdapiConfig(name, server string, ca []byte, token string) *clientcmdapi.Config {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[name] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: ca}
	cfg.AuthInfos[name] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: name}
	cfg.CurrentContext = name
	return cfg
}
