package switchboard.foreign;

/** The Spring Boot tutorial's event: the flat order a Spring producer sends and a Spring consumer reads. */
public class OrderEvent {
    private String orderId;
    private String productId;
    private int quantity;

    public OrderEvent() {
    }

    public OrderEvent(String orderId, String productId, int quantity) {
        this.orderId = orderId;
        this.productId = productId;
        this.quantity = quantity;
    }

    public String getOrderId() {
        return orderId;
    }

    public void setOrderId(String orderId) {
        this.orderId = orderId;
    }

    public String getProductId() {
        return productId;
    }

    public void setProductId(String productId) {
        this.productId = productId;
    }

    public int getQuantity() {
        return quantity;
    }

    public void setQuantity(int quantity) {
        this.quantity = quantity;
    }
}
