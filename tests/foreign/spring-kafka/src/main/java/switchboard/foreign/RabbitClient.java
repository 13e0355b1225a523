package switchboard.foreign;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Date;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import com.rabbitmq.client.AMQP;
import com.rabbitmq.client.Channel;
import com.rabbitmq.client.Connection;
import com.rabbitmq.client.ConnectionFactory;
import com.rabbitmq.client.GetResponse;
import com.rabbitmq.client.LongString;

/**
 * The RabbitMQ Java client (no Spring): {@code rabbit-publish} publishes one persistent message with
 * publisher confirms; {@code rabbit-get} reads every message of a queue with basic.get and puts them
 * back (nothing is acknowledged), printing each with its headers.
 *
 * <p>Options: {@code --uri=amqp://…}, {@code --exchange=}, {@code --routing-key=}, {@code --body=},
 * {@code --header=name:value} (repeatable), {@code --queue=}.
 */
final class RabbitClient {

    private RabbitClient() {
    }

    static int run(String mode, String[] args) throws Exception {
        Map<String, List<String>> options = parse(args);
        ConnectionFactory factory = new ConnectionFactory();
        factory.setUri(one(options, "uri", "amqp://guest:guest@localhost:5672/"));
        try (Connection connection = factory.newConnection("switchboard-foreign-java");
             Channel channel = connection.createChannel()) {
            switch (mode) {
                case "rabbit-publish" -> publish(channel, options);
                case "rabbit-get" -> get(channel, one(options, "queue", null));
                default -> {
                    System.err.println("unknown mode " + mode);
                    return 2;
                }
            }
        }
        return 0;
    }

    private static void publish(Channel channel, Map<String, List<String>> options) throws Exception {
        Map<String, Object> headers = new LinkedHashMap<>();
        for (String header : options.getOrDefault("header", List.of())) {
            int colon = header.indexOf(':');
            headers.put(header.substring(0, colon), header.substring(colon + 1));
        }
        AMQP.BasicProperties props = new AMQP.BasicProperties.Builder()
                .contentType("application/json")
                .deliveryMode(2)
                .headers(headers)
                .build();
        String exchange = one(options, "exchange", null);
        channel.confirmSelect();
        channel.basicPublish(exchange, one(options, "routing-key", ""), props,
                one(options, "body", null).getBytes(StandardCharsets.UTF_8));
        channel.waitForConfirmsOrDie(10_000);
        Map<String, Object> line = new LinkedHashMap<>();
        line.put("event", "published");
        line.put("exchange", exchange);
        Out.line(line);
    }

    private static void get(Channel channel, String queue) throws Exception {
        long last = -1;
        GetResponse response;
        while ((response = channel.basicGet(queue, false)) != null) {
            last = response.getEnvelope().getDeliveryTag();
            Map<String, Object> line = new LinkedHashMap<>();
            line.put("event", "message");
            line.put("queue", queue);
            line.put("exchange", response.getEnvelope().getExchange());
            line.put("routingKey", response.getEnvelope().getRoutingKey());
            line.put("body", new String(response.getBody(), StandardCharsets.UTF_8));
            Map<String, Object> headers = response.getProps().getHeaders();
            line.put("headers", headers == null ? Map.of() : plain(headers));
            Out.line(line);
        }
        if (last >= 0) {
            channel.basicNack(last, true, true);  // all of them back onto the queue
        }
    }

    /** AMQP table values as JSON-friendly values (long strings as text, timestamps as epoch ms). */
    private static Object plain(Object value) {
        if (value instanceof LongString text) {
            return text.toString();
        }
        if (value instanceof Map<?, ?> table) {
            Map<String, Object> out = new LinkedHashMap<>();
            table.forEach((k, v) -> out.put(String.valueOf(k), plain(v)));
            return out;
        }
        if (value instanceof List<?> items) {
            List<Object> out = new ArrayList<>();
            items.forEach(item -> out.add(plain(item)));
            return out;
        }
        if (value instanceof Date date) {
            return date.getTime();
        }
        return value;
    }

    private static Map<String, List<String>> parse(String[] args) {
        Map<String, List<String>> options = new LinkedHashMap<>();
        for (String arg : args) {
            if (!arg.startsWith("--") || !arg.contains("=")) {
                throw new IllegalArgumentException("expected --name=value, got " + arg);
            }
            int eq = arg.indexOf('=');
            options.computeIfAbsent(arg.substring(2, eq), k -> new ArrayList<>()).add(arg.substring(eq + 1));
        }
        return options;
    }

    private static String one(Map<String, List<String>> options, String name, String fallback) {
        List<String> values = options.get(name);
        if (values == null || values.isEmpty()) {
            if (fallback == null) {
                throw new IllegalArgumentException("--" + name + "= is required");
            }
            return fallback;
        }
        return values.get(values.size() - 1);
    }
}
