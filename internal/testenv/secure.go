package testenv

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// SecureBroker is a test's own broker with secured listeners: SASL_SSL
// (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 and unsecured-JWT OAUTHBEARER) and
// SSL with client certificates required (mTLS), besides its PLAINTEXT
// listener.
type SecureBroker struct {
	*KafkaProcess
	// SASLSSL and MTLS are the secured listeners' addresses.
	SASLSSL, MTLS string
	// CAFile signs the broker's certificate (for the name "localhost"
	// and 127.0.0.1); OtherCAFile signs nothing the broker has.
	CAFile, OtherCAFile string
	// ClientCertFile and ClientKeyFile are a client certificate signed by
	// CAFile, for the mTLS listener.
	ClientCertFile, ClientKeyFile string
	// User and Password are known to PLAIN and both SCRAM mechanisms.
	User, Password string
}

// OwnSecureBroker starts a SecureBroker for the test (see OwnBroker).
func OwnSecureBroker(t *testing.T) *SecureBroker {
	t.Helper()
	dir := t.TempDir()
	ca, caKey := newCA(t, "orchestrix test CA")
	other, _ := newCA(t, "some other CA")
	sb := &SecureBroker{CAFile: filepath.Join(dir, "ca.pem"), OtherCAFile: filepath.Join(dir, "other-ca.pem"),
		ClientCertFile: filepath.Join(dir, "client.pem"), ClientKeyFile: filepath.Join(dir, "client-key.pem"),
		User: "alice", Password: "alice-secret-1"}
	writePEM(t, sb.CAFile, "CERTIFICATE", ca.Raw)
	writePEM(t, sb.OtherCAFile, "CERTIFICATE", other.Raw)
	serverCert, serverKey := newLeaf(t, ca, caKey, "localhost", x509.ExtKeyUsageServerAuth)
	keystore := filepath.Join(dir, "server.pem")
	writePEM(t, keystore, "PRIVATE KEY", serverKey)
	appendPEM(t, keystore, "CERTIFICATE", serverCert)
	clientCert, clientKey := newLeaf(t, ca, caKey, "orchestrix-client", x509.ExtKeyUsageClientAuth)
	writePEM(t, sb.ClientCertFile, "CERTIFICATE", clientCert)
	writePEM(t, sb.ClientKeyFile, "PRIVATE KEY", clientKey)

	saslPort, mtlsPort := freePort(t), freePort(t)
	sb.SASLSSL, sb.MTLS = fmt.Sprintf("127.0.0.1:%d", saslPort), fmt.Sprintf("127.0.0.1:%d", mtlsPort)
	props := fmt.Sprintf(`ssl.keystore.type=PEM
ssl.keystore.location=%[1]s
ssl.truststore.type=PEM
ssl.truststore.location=%[2]s
listener.name.mtls.ssl.client.auth=required
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512,OAUTHBEARER
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_%[3]s="%[4]s";
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.oauthbearer.sasl.jaas.config=org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required;
`, keystore, sb.CAFile, sb.User, sb.Password)
	scram := fmt.Sprintf("[name=%s,password=%s]", sb.User, sb.Password)
	sb.KafkaProcess = ownBroker(t, brokerExtras{
		listeners: []extraListener{{"SASL_SSL", "SASL_SSL", saslPort}, {"MTLS", "SSL", mtlsPort}},
		props:     props,
		format:    []string{"--add-scram", "SCRAM-SHA-256=" + scram, "--add-scram", "SCRAM-SHA-512=" + scram},
	})
	return sb
}

// UnsecuredJWT returns an unsigned OAUTHBEARER token for subject, as
// Kafka's default (unsecured) validator accepts: for tests only.
func UnsecuredJWT(subject string) string {
	enc := base64.RawURLEncoding.EncodeToString
	now := time.Now().Unix()
	return enc([]byte(`{"alg":"none"}`)) + "." + enc(fmt.Appendf(nil, `{"sub":%q,"iat":%d,"exp":%d}`, subject, now, now+3600)) + "."
}

func newCA(t *testing.T, name string) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// newLeaf returns a certificate (DER) signed by ca for name (and
// 127.0.0.1), and its PKCS #8 key (DER).
func newLeaf(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey, name string, usage x509.ExtKeyUsage) ([]byte, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		DNSNames: []string{name}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	pk, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return der, pk
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func appendPEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})); err != nil {
		t.Fatal(err)
	}
}
