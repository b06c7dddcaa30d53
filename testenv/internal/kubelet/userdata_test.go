package kubelet

import (
	"encoding/base64"
	"testing"
)

func TestK3sNodeLabelsReadsTheConfigWrittenByCloudConfig(t *testing.T) {
	ud := "#cloud-config\nwrite_files:\n  - path: /etc/other\n    content: x\n  - path: /etc/rancher/k3s/config.yaml\n    content: |\n      token: \"t\"\n      node-label:\n        - \"phoenix.dev/env=demo\"\n        - \"phoenix.dev/instance=server-0\"\n"
	labels, err := k3sNodeLabels([]byte(ud))
	if err != nil {
		t.Fatal(err)
	}
	if labels["phoenix.dev/instance"] != "server-0" || labels["phoenix.dev/env"] != "demo" || len(labels) != 2 {
		t.Fatalf("labels = %v", labels)
	}
}

func TestK3sNodeLabelsDecodesBase64Content(t *testing.T) {
	content := base64.StdEncoding.EncodeToString([]byte("node-label:\n  - a=b\n"))
	ud := "#cloud-config\nwrite_files:\n  - path: /etc/rancher/k3s/config.yaml\n    encoding: b64\n    content: " + content + "\n"
	labels, err := k3sNodeLabels([]byte(ud))
	if err != nil || labels["a"] != "b" {
		t.Fatalf("labels = %v, err = %v", labels, err)
	}
}

func TestK3sNodeLabelsWithoutConfigOrCloudConfigIsEmpty(t *testing.T) {
	for _, ud := range []string{"", "#!/bin/sh\necho hi\n", "#cloud-config\nwrite_files: []\n"} {
		labels, err := k3sNodeLabels([]byte(ud))
		if err != nil || len(labels) != 0 {
			t.Fatalf("%q: labels = %v, err = %v", ud, labels, err)
		}
	}
}

func TestK3sNodeLabelsRejectsAMalformedLabel(t *testing.T) {
	ud := "#cloud-config\nwrite_files:\n  - path: /etc/rancher/k3s/config.yaml\n    content: |\n      node-label: [\"novalue\"]\n"
	if _, err := k3sNodeLabels([]byte(ud)); err == nil {
		t.Fatal("a label without '=' was accepted")
	}
}
