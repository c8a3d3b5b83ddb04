package nodeconfig_test

import (
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/warren-mesh/warren/api/nodeconfig"
)

func TestParseArticle(t *testing.T) {
	data, err := os.ReadFile("testdata/article.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s, err := nodeconfig.Parse(data)
	if err != nil {
		t.Fatalf("Parse(article.yaml): %v", err)
	}
	if got := len(s.GetWorkloads()); got != 2 {
		t.Fatalf("workloads = %d; want 2", got)
	}
	srv := s.GetServers()[0]
	if srv.GetPortNumber() != 8080 || srv.GetAuthorizations()[0].GetMeshTls().GetIdentities()[0] != "spiffe://cluster.local/ns/default/sa/service-a" {
		t.Errorf("server = %v; want port 8080 allowing service-a", srv)
	}
	// Marshal then Parse gives back the same snapshot.
	out, err := nodeconfig.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	back, err := nodeconfig.Parse(out)
	if err != nil {
		t.Fatalf("Parse(Marshal(s)): %v", err)
	}
	if diff := cmp.Diff(s, back, protocmp.Transform()); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
}

func valid() *nodeconfig.Snapshot {
	return &nodeconfig.Snapshot{
		Workloads: []*nodeconfig.Workload{
			{Uid: "a", Name: "a", Namespace: "ns", ServiceAccount: "sa", Addresses: []string{"10.0.0.1"}, Servers: []string{"ns/s"}},
			{Uid: "b", Name: "b", Namespace: "ns", ServiceAccount: "sa", Addresses: []string{"10.0.0.2", "fd00::2"}},
		},
		Services: []*nodeconfig.Service{{
			Name: "svc", Namespace: "ns", Addresses: []string{"10.96.0.1"},
			Ports:     []*nodeconfig.ServicePort{{ServicePort: 80, TargetPort: 8080}},
			Endpoints: []*nodeconfig.Endpoint{{WorkloadUid: "a"}},
		}},
		Servers: []*nodeconfig.Server{{Name: "s", Namespace: "ns", Port: &nodeconfig.Server_PortNumber{PortNumber: 8080}}},
	}
}

func TestValidateRejects(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(s *nodeconfig.Snapshot)
		want   string
	}{
		{"workload without uid", func(s *nodeconfig.Snapshot) { s.Workloads[0].Uid = "" }, "uid is required"},
		{"duplicate uid", func(s *nodeconfig.Snapshot) { s.Workloads[1].Uid = "a" }, "workload a: uid used twice"},
		{"missing service account", func(s *nodeconfig.Snapshot) { s.Workloads[0].ServiceAccount = "" }, "name, namespace and service account are required"},
		{"bad address", func(s *nodeconfig.Snapshot) { s.Workloads[0].Addresses = []string{"10.0.0.300"} }, `address "10.0.0.300" is not an IP`},
		{"shared address", func(s *nodeconfig.Snapshot) { s.Workloads[1].Addresses = []string{"10.0.0.1"} }, "address 10.0.0.1 is also workload a's"},
		{"mapped address clash", func(s *nodeconfig.Snapshot) { s.Workloads[1].Addresses = []string{"::ffff:10.0.0.1"} }, "address 10.0.0.1 is also workload a's"},
		{"port out of range", func(s *nodeconfig.Snapshot) {
			s.Workloads[0].Ports = []*nodeconfig.WorkloadPort{{Name: "x", Port: 70000}}
		}, "number 70000 out of range"},
		{"unknown server", func(s *nodeconfig.Snapshot) { s.Workloads[0].Servers = []string{"ns/nope"} }, `server "ns/nope" is not in the snapshot`},
		{"server without port", func(s *nodeconfig.Snapshot) { s.Servers[0].Port = nil }, "a port number or name is required"},
		{"server port 0", func(s *nodeconfig.Snapshot) { s.Servers[0].Port = &nodeconfig.Server_PortNumber{} }, "port 0 out of range"},
		{"duplicate server", func(s *nodeconfig.Snapshot) {
			s.Servers = append(s.Servers, proto.Clone(s.Servers[0]).(*nodeconfig.Server))
		}, "server ns/s: defined twice"},
		{"vip is a pod ip", func(s *nodeconfig.Snapshot) { s.Services[0].Addresses = []string{"10.0.0.2"} }, "address 10.0.0.2 is also workload b's"},
		{"endpoint unknown", func(s *nodeconfig.Snapshot) { s.Services[0].Endpoints[0].WorkloadUid = "zz" }, `endpoint workload "zz" is not in the snapshot`},
		{"service port without target", func(s *nodeconfig.Snapshot) { s.Services[0].Ports[0].TargetPort = 0 }, "needs a target port number or name"},
		{"service port twice", func(s *nodeconfig.Snapshot) {
			s.Services[0].Ports = append(s.Services[0].Ports, &nodeconfig.ServicePort{ServicePort: 80, TargetPort: 1})
		}, "port 80 listed twice"},
		{"bad trust domain", func(s *nodeconfig.Snapshot) { s.TrustDomain = "spiffe://Cluster" }, "trust domain"},
		{"waypoint address", func(s *nodeconfig.Snapshot) { s.Workloads[0].Waypoint = &nodeconfig.GatewayAddress{Address: "wp"} }, `waypoint: address "wp" is not an IP`},
	}
	if err := nodeconfig.Validate(valid()); err != nil {
		t.Fatalf("Validate(valid) = %v", err)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := valid()
			tc.mutate(s)
			err := nodeconfig.Validate(s)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate = %v; want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestParseRejects(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"not yaml", "workloads: [", "parse node config"},
		{"unknown field", "workloadz: []", `unknown field "workloadz"`},
		{"bad enum", "defaults: {defaultInboundPolicy: maybe}", "parse node config"},
		{"invalid content", "workloads: [{uid: a}]", "name, namespace and service account are required"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := nodeconfig.Parse([]byte(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse(%q) = %v; want an error containing %q", tc.in, err, tc.want)
			}
		})
	}
}
