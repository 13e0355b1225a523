package switchboard.foreign;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Base64;
import java.util.Collection;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;
import java.util.concurrent.ConcurrentHashMap;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.header.Headers;
import org.springframework.beans.factory.annotation.Value;
import org.springframework.boot.ApplicationRunner;
import org.springframework.boot.SpringApplication;
import org.springframework.boot.autoconfigure.condition.ConditionalOnProperty;
import org.springframework.context.ApplicationContext;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;
import org.springframework.kafka.annotation.KafkaListener;
import org.springframework.kafka.core.KafkaOperations;
import org.springframework.kafka.core.KafkaTemplate;
import org.springframework.kafka.listener.ConsumerSeekAware;
import org.springframework.kafka.listener.DeadLetterPublishingRecoverer;
import org.springframework.kafka.listener.DefaultErrorHandler;
import org.springframework.kafka.support.KafkaHeaders;
import org.springframework.kafka.support.converter.ByteArrayJsonMessageConverter;
import org.springframework.kafka.support.converter.RecordMessageConverter;
import org.springframework.messaging.handler.annotation.Header;
import org.springframework.messaging.handler.annotation.Payload;
import org.springframework.stereotype.Component;
import org.springframework.util.backoff.FixedBackOff;

/**
 * The Spring Kafka side. Consumers use Spring Boot's defaults (the Java client's default assignors,
 * range and cooperative-sticky); values travel as bytes and {@code @KafkaListener} payloads are
 * converted by Spring Boot's auto-configured ObjectMapper (unknown properties ignored).
 */
@Configuration
public class KafkaModes {

    /** JSON payloads for POJO listeners, through Spring Boot's ObjectMapper (picked up by Boot's listener factory). */
    @Bean
    RecordMessageConverter messageConverter(ObjectMapper mapper) {
        return new ByteArrayJsonMessageConverter(mapper);
    }

    /**
     * kafka-fail: Spring retries a failing record in place, then DeadLetterPublishingRecoverer writes it to
     * {@code <topic><foreign.dlt-suffix>}, same partition. Spring Kafka 3's default suffix is {@code -dlt}
     * (2.x: {@code .DLT}), so the resolver names Switchboard's {@code .DLT} explicitly.
     */
    @Bean
    @ConditionalOnProperty(name = "foreign.mode", havingValue = "kafka-fail")
    DefaultErrorHandler errorHandler(KafkaOperations<Object, Object> template,
                                     @Value("${foreign.dlt-suffix:.DLT}") String dltSuffix,
                                     @Value("${foreign.retries:2}") long retries,
                                     @Value("${foreign.retry-interval-ms:200}") long intervalMs) {
        DeadLetterPublishingRecoverer recoverer = new DeadLetterPublishingRecoverer(template,
                (record, exception) -> new TopicPartition(record.topic() + dltSuffix, record.partition()));
        return new DefaultErrorHandler(recoverer, new FixedBackOff(intervalMs, retries));
    }

    /**
     * kafka-publish: sends {@code --foreign.events} (a JSON array) to {@code --foreign.topic}, key = orderId.
     * Elements of the tutorial's shape are sent as {@link OrderEvent}s, others as they are; every record
     * carries {@code --foreign.headers} (a JSON object, values text or {@code base64:<bytes>}).
     */
    @Bean
    @ConditionalOnProperty(name = "foreign.mode", havingValue = "kafka-publish")
    ApplicationRunner publisher(KafkaTemplate<String, byte[]> template, ObjectMapper mapper, ApplicationContext context,
                                @Value("${foreign.topic}") String topic,
                                @Value("${foreign.events}") String events,
                                @Value("${foreign.headers:{}}") String headers) {
        return args -> {
            JsonNode extra = mapper.readTree(headers);
            for (JsonNode element : mapper.readTree(events)) {
                Object value = isOrderEvent(element) ? mapper.treeToValue(element, OrderEvent.class) : element;
                String key = element.path("orderId").asText(null);
                ProducerRecord<String, byte[]> record = new ProducerRecord<>(topic, key, mapper.writeValueAsBytes(value));
                for (Iterator<Map.Entry<String, JsonNode>> it = extra.fields(); it.hasNext(); ) {
                    Map.Entry<String, JsonNode> header = it.next();
                    record.headers().add(header.getKey(), headerBytes(header.getValue().asText()));
                }
                RecordMetadata sent = template.send(record).get().getRecordMetadata();
                Map<String, Object> line = new LinkedHashMap<>();
                line.put("event", "published");
                line.put("orderId", key);
                line.put("partition", sent.partition());
                line.put("offset", sent.offset());
                Out.line(line);
            }
            System.exit(SpringApplication.exit(context, () -> 0));
        };
    }

    private static boolean isOrderEvent(JsonNode node) {
        Set<String> names = new TreeSet<>();
        node.fieldNames().forEachRemaining(names::add);
        return names.equals(Set.of("orderId", "productId", "quantity"));
    }

    private static byte[] headerBytes(String value) {
        return value.startsWith("base64:")
                ? Base64.getDecoder().decode(value.substring("base64:".length()))
                : value.getBytes(StandardCharsets.UTF_8);
    }

    static Map<String, String> base64Headers(Headers headers) {
        Map<String, String> out = new LinkedHashMap<>();
        for (org.apache.kafka.common.header.Header header : headers) {
            out.put(header.key(), Base64.getEncoder().encodeToString(header.value() == null ? new byte[0] : header.value()));
        }
        return out;
    }

    /** Prints the listener's partitions whenever the group assigns or revokes some. */
    abstract static class AssignmentPrinter implements ConsumerSeekAware {
        private final Set<String> owned = new TreeSet<>();

        abstract String listener();

        @Override
        public void onPartitionsAssigned(Map<TopicPartition, Long> assignments, ConsumerSeekCallback callback) {
            assignments.keySet().forEach(tp -> owned.add(tp.topic() + ":" + tp.partition()));
            print();
        }

        @Override
        public void onPartitionsRevoked(Collection<TopicPartition> partitions) {
            partitions.forEach(tp -> owned.remove(tp.topic() + ":" + tp.partition()));
            print();
        }

        private void print() {
            Map<String, Object> line = new LinkedHashMap<>();
            line.put("event", "assignment");
            line.put("listener", listener());
            line.put("partitions", new ArrayList<>(owned));
            Out.line(line);
        }
    }

    /** kafka-consume: the tutorial's consumer, an {@link OrderEvent} per record. */
    @Component
    @ConditionalOnProperty(name = "foreign.mode", havingValue = "kafka-consume")
    static class ConsumeListener extends AssignmentPrinter {
        @Override
        String listener() {
            return "consume";
        }

        @KafkaListener(id = "foreign-consume", topics = "${foreign.topic}", groupId = "${foreign.group}")
        public void onOrder(@Payload OrderEvent event,
                            @Header(KafkaHeaders.RECEIVED_PARTITION) int partition,
                            @Header(KafkaHeaders.OFFSET) long offset,
                            @Header(name = KafkaHeaders.RECEIVED_KEY, required = false) String key) {
            Map<String, Object> line = new LinkedHashMap<>();
            line.put("event", "consumed");
            line.put("partition", partition);
            line.put("offset", offset);
            line.put("key", key);
            line.put("orderId", event.getOrderId());
            line.put("productId", event.getProductId());
            line.put("quantity", event.getQuantity());
            Out.line(line);
        }
    }

    /** kafka-fail: a listener that throws for orders of {@code --foreign.fail-product}, counting its attempts. */
    @Component
    @ConditionalOnProperty(name = "foreign.mode", havingValue = "kafka-fail")
    static class FailingListener extends AssignmentPrinter {
        private final Map<String, Integer> attempts = new ConcurrentHashMap<>();
        private final String failProduct;

        FailingListener(@Value("${foreign.fail-product}") String failProduct) {
            this.failProduct = failProduct;
        }

        @Override
        String listener() {
            return "fail";
        }

        @KafkaListener(id = "foreign-fail", topics = "${foreign.topic}", groupId = "${foreign.group}")
        public void onOrder(@Payload OrderEvent event, @Header(KafkaHeaders.OFFSET) long offset) {
            if (!failProduct.equals(event.getProductId())) {
                return;
            }
            int attempt = attempts.merge(event.getOrderId() + "@" + offset, 1, Integer::sum);
            Map<String, Object> line = new LinkedHashMap<>();
            line.put("event", "attempt");
            line.put("orderId", event.getOrderId());
            line.put("offset", offset);
            line.put("attempt", attempt);
            Out.line(line);
            throw new IllegalStateException("the Spring listener refuses order " + event.getOrderId());
        }
    }

    /** kafka-fail: the tutorial's DLT listener on the dead-letter topic. */
    @Component
    @ConditionalOnProperty(name = "foreign.mode", havingValue = "kafka-fail")
    static class DltListener extends AssignmentPrinter {
        @Override
        String listener() {
            return "dlt";
        }

        @KafkaListener(id = "foreign-dlt", topics = "${foreign.topic}${foreign.dlt-suffix:.DLT}", groupId = "${foreign.group}-dlt")
        public void onDeadLetter(ConsumerRecord<String, byte[]> record) {
            Out.text("DLT received failed message: " + new String(record.value(), StandardCharsets.UTF_8));
            Map<String, Object> line = new LinkedHashMap<>();
            line.put("event", "dlt");
            line.put("partition", record.partition());
            line.put("offset", record.offset());
            line.put("key", record.key());
            line.put("value", Base64.getEncoder().encodeToString(record.value()));
            line.put("headers", base64Headers(record.headers()));
            Out.line(line);
        }
    }
}
