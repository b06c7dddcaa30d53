// Package ec2 reads the instances phoenix owns from an EC2 Query API endpoint (moto in tests), so the simulated
// kubelet can register one Node per instance — nodes join only after the cloud layer launched them.
package ec2

import (
	"context"
	"encoding/base64"
	"encoding/xml"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// EnvTag and RoleTag are the ownership tags phoenix puts on its instances.
const (
	EnvTag  = "phoenix:env"
	RoleTag = "phoenix:role"
)

// Instance is what the kubelet needs of one instance.
type Instance struct {
	ID         string
	State      string
	PrivateDNS string
	PrivateIP  string
	Zone       string
	Tags       map[string]string
}

// NodeName is the Node name k3s gives an EC2 instance: the first label of its private DNS name.
func (i Instance) NodeName() string {
	first, _, _ := strings.Cut(i.PrivateDNS, ".")
	if first == "" {
		return i.ID
	}
	return first
}

type describeResponse struct {
	Reservations []struct {
		Instances []struct {
			ID         string `xml:"instanceId"`
			State      string `xml:"instanceState>name"`
			PrivateDNS string `xml:"privateDnsName"`
			PrivateIP  string `xml:"privateIpAddress"`
			Zone       string `xml:"placement>availabilityZone"`
			Tags       []struct {
				Key   string `xml:"key"`
				Value string `xml:"value"`
			} `xml:"tagSet>item"`
		} `xml:"instancesSet>item"`
	} `xml:"reservationSet>item"`
	NextToken string `xml:"nextToken"`
}

// Client polls one endpoint.
type Client struct {
	Endpoint string
	Region   string
	HTTP     *http.Client
}

// call posts one EC2 Query API action and returns the response body of a 200 answer.
func (c *Client) call(ctx context.Context, action string, form url.Values) ([]byte, error) {
	form.Set("Action", action)
	form.Set("Version", "2016-11-15")
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(c.Endpoint, "/")+"/", strings.NewReader(form.Encode()))
	if err != nil {
		return nil, fmt.Errorf("building %s for %s: %w", action, c.Endpoint, err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")
	// moto reads the region from the credential scope; the signature itself is not checked.
	req.Header.Set("Authorization", fmt.Sprintf("AWS4-HMAC-SHA256 Credential=test/20260101/%s/ec2/aws4_request, SignedHeaders=host, Signature=0", c.Region))
	req.Header.Set("X-Amz-Date", "20260101T000000Z")
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return nil, fmt.Errorf("calling %s at %s: %w", action, c.Endpoint, err)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	resp.Body.Close()
	if err != nil {
		return nil, fmt.Errorf("reading %s from %s: %w", action, c.Endpoint, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s at %s returned HTTP %d", action, c.Endpoint, resp.StatusCode)
	}
	return body, nil
}

// Describe lists every instance carrying the phoenix:env tag (all pages).
func (c *Client) Describe(ctx context.Context) ([]Instance, error) {
	var out []Instance
	token := ""
	for page := 0; page < 100; page++ {
		form := url.Values{}
		form.Set("Filter.1.Name", "tag-key")
		form.Set("Filter.1.Value.1", EnvTag)
		if token != "" {
			form.Set("NextToken", token)
		}
		body, err := c.call(ctx, "DescribeInstances", form)
		if err != nil {
			return nil, err
		}
		var parsed describeResponse
		if err := xml.Unmarshal(body, &parsed); err != nil {
			return nil, fmt.Errorf("parsing DescribeInstances from %s: %w", c.Endpoint, err)
		}
		for _, r := range parsed.Reservations {
			for _, i := range r.Instances {
				inst := Instance{ID: i.ID, State: i.State, PrivateDNS: i.PrivateDNS, PrivateIP: i.PrivateIP, Zone: i.Zone, Tags: map[string]string{}}
				for _, t := range i.Tags {
					inst.Tags[t.Key] = t.Value
				}
				out = append(out, inst)
			}
		}
		if parsed.NextToken == "" {
			return out, nil
		}
		token = parsed.NextToken
	}
	return nil, fmt.Errorf("DescribeInstances at %s: more than 100 pages", c.Endpoint)
}

// UserData returns the decoded user-data of one instance (empty when it has none), as a real instance reads it
// from its metadata service at boot.
func (c *Client) UserData(ctx context.Context, instanceID string) ([]byte, error) {
	form := url.Values{}
	form.Set("InstanceId", instanceID)
	form.Set("Attribute", "userData")
	body, err := c.call(ctx, "DescribeInstanceAttribute", form)
	if err != nil {
		return nil, err
	}
	var parsed struct {
		Value string `xml:"userData>value"`
	}
	if err := xml.Unmarshal(body, &parsed); err != nil {
		return nil, fmt.Errorf("parsing DescribeInstanceAttribute userData of %s from %s: %w", instanceID, c.Endpoint, err)
	}
	data, err := base64.StdEncoding.DecodeString(strings.TrimSpace(parsed.Value))
	if err != nil {
		return nil, fmt.Errorf("user-data of %s is not base64: %w", instanceID, err)
	}
	return data, nil
}

// NewClient builds a client with a bounded per-request timeout.
func NewClient(endpoint, region string) *Client {
	return &Client{Endpoint: endpoint, Region: region, HTTP: &http.Client{Timeout: 5 * time.Second}}
}
