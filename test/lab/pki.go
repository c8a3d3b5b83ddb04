//go:build linux

package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// clusterPKI is the lab cluster's certificate authority and the kube-apiserver files signed by
// it, written where envtest looks for them (the API server's cert dir), so that the serving
// certificate names what pods dial: the kubernetes Service's ClusterIP and DNS names. envtest's
// own certificate names only localhost and 127.0.0.1, which is enough for a test on the host
// but not for in-cluster clients (client-go's in-cluster config dials KUBERNETES_SERVICE_HOST).
type clusterPKI struct {
	// Dir holds ca.crt, apiserver.crt/.key and sa-signer.crt/.key.
	Dir string
	// CAPEM is the CA certificate: kube-controller-manager publishes it as ConfigMap
	// kube-root-ca.crt (--root-ca-file) and clients verify the API server with it.
	CAPEM []byte
}

// kubernetesServiceIP is the first address of envtest's service range (10.0.0.0/24): the
// kubernetes Service's ClusterIP.
var kubernetesServiceIP = net.IPv4(10, 0, 0, 1)

// writeClusterPKI creates the CA, the API server's serving certificate and the service-account
// signing key pair in dir (0700). The names of the files are envtest's (apiserver.crt,
// apiserver.key, sa-signer.crt, sa-signer.key): when apiserver.crt exists, envtest uses the
// directory as it is.
func writeClusterPKI(dir string) (*clusterPKI, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("cluster pki: %w", err)
	}
	now := time.Now().Add(-time.Hour)
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("cluster pki: ca key: %w", err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "wrn-lab cluster CA", Organization: []string{"warren lab"}},
		NotBefore:             now,
		NotAfter:              now.Add(30 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("cluster pki: ca certificate: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("cluster pki: serving key: %w", err)
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: "kube-apiserver"},
		NotBefore:    now,
		NotAfter:     now.Add(30 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
			"kubernetes.default.svc.cluster.local"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), kubernetesServiceIP, net.IP(apiServerIP.AsSlice())},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, ca, &srvKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("cluster pki: serving certificate: %w", err)
	}
	srvKeyDER, err := x509.MarshalPKCS8PrivateKey(srvKey)
	if err != nil {
		return nil, err
	}
	// Service-account tokens: RSA, which every Kubernetes component accepts.
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, fmt.Errorf("cluster pki: service-account key: %w", err)
	}
	saPub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return nil, err
	}
	p := &clusterPKI{Dir: dir, CAPEM: pemBlock("CERTIFICATE", caDER)}
	files := map[string][]byte{
		"ca.crt":        p.CAPEM,
		"apiserver.crt": append(pemBlock("CERTIFICATE", srvDER), p.CAPEM...),
		"apiserver.key": pemBlock("PRIVATE KEY", srvKeyDER),
		"sa-signer.crt": pemBlock("PUBLIC KEY", saPub),
		"sa-signer.key": pemBlock("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(saKey)),
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			return nil, fmt.Errorf("cluster pki: %w", err)
		}
	}
	return p, nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}
