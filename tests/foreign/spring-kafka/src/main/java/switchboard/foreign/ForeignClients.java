package switchboard.foreign;

import java.util.Arrays;

import org.springframework.boot.SpringApplication;
import org.springframework.boot.autoconfigure.SpringBootApplication;

/**
 * One jar, several foreign clients; the first argument picks one.
 *
 * <ul>
 *   <li>{@code kafka-publish}, {@code kafka-consume}, {@code kafka-fail}: the Spring Boot application
 *       ({@link KafkaModes}); options are Spring properties, e.g. {@code --foreign.topic=orders}.</li>
 *   <li>{@code rabbit-publish}, {@code rabbit-get}: the RabbitMQ Java client ({@link RabbitClient}).</li>
 * </ul>
 *
 * Results are JSON lines on stdout (see {@link Out}); Spring's own log goes to stderr.
 */
@SpringBootApplication
public class ForeignClients {

    public static void main(String[] args) throws Exception {
        if (args.length == 0) {
            System.err.println("usage: foreign-clients kafka-publish|kafka-consume|kafka-fail|rabbit-publish|rabbit-get [options]");
            System.exit(2);
        }
        String mode = args[0];
        String[] rest = Arrays.copyOfRange(args, 1, args.length);
        if (mode.startsWith("rabbit-")) {
            System.exit(RabbitClient.run(mode, rest));
        }
        SpringApplication app = new SpringApplication(ForeignClients.class);
        app.setAdditionalProfiles(mode);
        String[] withMode = Arrays.copyOf(rest, rest.length + 1);
        withMode[rest.length] = "--foreign.mode=" + mode;
        app.run(withMode);
    }
}
