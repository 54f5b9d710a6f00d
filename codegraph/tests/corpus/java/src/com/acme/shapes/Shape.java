package com.acme.shapes;

public abstract class Shape {
    public abstract double area();

    public String describe() {
        return Format.number(area());
    }
}
