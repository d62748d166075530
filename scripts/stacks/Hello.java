// Sends one ClientHello with the JDK's own TLS stack (JSSE) to 127.0.0.1:PORT, SNI
// login.microsoftonline.com; the handshake is expected to fail (nothing answers).
// usage: java -Djdk.tls.client.protocols=... Hello.java PORT
import javax.net.ssl.SNIHostName;
import javax.net.ssl.SSLContext;
import javax.net.ssl.SSLParameters;
import javax.net.ssl.SSLSocket;
import java.util.List;

public class Hello {
    public static void main(String[] args) throws Exception {
        SSLContext ctx = SSLContext.getDefault();
        try (SSLSocket s = (SSLSocket) ctx.getSocketFactory().createSocket("127.0.0.1", Integer.parseInt(args[0]))) {
            SSLParameters p = s.getSSLParameters();
            p.setServerNames(List.of(new SNIHostName("login.microsoftonline.com")));
            s.setSSLParameters(p);
            s.setSoTimeout(5000);
            s.startHandshake();
        } catch (Exception e) {
            System.err.println("expected: " + e);
        }
    }
}
