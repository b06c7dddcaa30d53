package kubelet

import (
	"encoding/base64"
	"fmt"
	"strings"

	"sigs.k8s.io/yaml"
)

// k3sConfigPath is where phoenix's cloud-config writes the k3s configuration a real node starts with.
const k3sConfigPath = "/etc/rancher/k3s/config.yaml"

// k3sNodeLabels reads the labels a real k3s node would register with: the `node-label` list ("key=value") of the
// k3s configuration file the instance's cloud-config writes. User-data that is not a cloud-config, or writes no
// k3s configuration, gives no labels; a configuration that is there but malformed is an error.
func k3sNodeLabels(userData []byte) (map[string]string, error) {
	text := string(userData)
	if !strings.HasPrefix(text, "#cloud-config") {
		return nil, nil
	}
	var doc struct {
		WriteFiles []struct {
			Path     string `json:"path"`
			Content  string `json:"content"`
			Encoding string `json:"encoding"`
		} `json:"write_files"`
	}
	if err := yaml.Unmarshal(userData, &doc); err != nil {
		return nil, fmt.Errorf("user-data is not valid cloud-config YAML: %w", err)
	}
	for _, f := range doc.WriteFiles {
		if f.Path != k3sConfigPath {
			continue
		}
		content := []byte(f.Content)
		switch f.Encoding {
		case "", "text/plain":
		case "b64", "base64":
			decoded, err := base64.StdEncoding.DecodeString(strings.TrimSpace(f.Content))
			if err != nil {
				return nil, fmt.Errorf("%s: content is not base64: %w", k3sConfigPath, err)
			}
			content = decoded
		default:
			return nil, fmt.Errorf("%s: encoding %q is not read by the simulated kubelet (plain or b64)", k3sConfigPath, f.Encoding)
		}
		var config struct {
			NodeLabel []string `json:"node-label"`
		}
		if err := yaml.Unmarshal(content, &config); err != nil {
			return nil, fmt.Errorf("%s is not valid YAML: %w", k3sConfigPath, err)
		}
		labels := map[string]string{}
		for _, l := range config.NodeLabel {
			key, value, ok := strings.Cut(l, "=")
			if !ok || key == "" {
				return nil, fmt.Errorf("%s: node-label %q is not key=value", k3sConfigPath, l)
			}
			labels[key] = value
		}
		return labels, nil
	}
	return nil, nil
}
